"""The feature ranker: lists from the hybrid top-k, one TF-Ranking head per candidate loss, dense fusion, valid scores.

The ranker trains on the held-out training queries' lists (judged + unjudged retrieved candidates).
Each candidate loss trains its own head, whose score is fused with the catalog-z-scored two-tower
score at a weight chosen on the tuning half of valid; the head with the best end-to-end NDCG@10
there is saved. It is kept for serving only if it beats the hybrid retrieval order on that same
tuning half: a ranker that does not help (little data, say) is not shipped, and the run's exports
then serve retrieval order.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfrec import compat
from tfrec.data.tables import Judgments
from tfrec.evaluation import search as ev
from tfrec.search.hybrid import CatalogScorer, HybridWeights
from tfrec.search.models import catalog_columns, catalog_features
from tfrec.search.ranker_data import CandidateLists, candidate_lists, head_inputs, judged_lists, training_lists
from tfrec.search.ranker_training import final_train_metrics, train_ranker_head
from tfrec.search.stages.baselines import ZeroShot
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.lexical import Lexical
from tfrec.search.stages.queries import QuerySplits, rank_candidates, subset_eval_set
from tfrec.search.stages.towers import DenseVectors

tf = compat.tensorflow()
log = logging.getLogger(__name__)

# Weights of the catalog-z-scored two-tower score added to the ranker's (scaled) score.
DENSE_WEIGHT_GRID = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True, eq=False)
class RankerLists:
    """The ranker's training lists and the valid lists it scores, each with its head inputs."""

    candidates: np.ndarray  # [ranker queries, top_k] hybrid top-k of the ranker's training queries
    train: CandidateLists
    train_inputs: dict
    judged: CandidateLists  # valid's judged products (the re-rank view)
    judged_inputs: dict
    valid_inputs: dict  # valid's hybrid top-k (the end-to-end view)


RANKER, RETRIEVAL = "ranker", "retrieval"


@dataclass(frozen=True, eq=False)
class Ranker:
    """The best head (saved in the run folder) and metrics.json's training.ranker."""

    head: Any
    info: dict

    @property
    def kept(self) -> bool:
        """Whether search results are re-ranked by the head (False: served in retrieval order)."""
        return self.info.get("selection", {}).get("kept", RANKER) == RANKER


@dataclass(frozen=True, eq=False)
class RankedValid:
    """The kept head on valid: scores of the judged products (in eval-set order) and the re-ranked top-k."""

    judged_scores: np.ndarray
    top: np.ndarray  # [Q, top_k]


def ranker_lists(ctx: SearchContext, lexical: Lexical, scorer: CatalogScorer, weights: HybridWeights, queries: QuerySplits,
                 dense: DenseVectors, zero: ZeroShot, valid_top: np.ndarray) -> RankerLists:
    """Retrieve the ranker's training lists and build the head inputs of them and of valid's lists."""
    cfg = ctx.cfg
    top_k = cfg.retrieval.top_k
    columns = catalog_features(cfg, ctx.data.catalog)

    def inputs(lists: CandidateLists, es: ev.SearchEvalSet, q_dense: np.ndarray, q_zero: np.ndarray) -> dict:
        return head_inputs(lists, np.asarray(es.queries).astype(str), q_dense, q_zero, dense.catalog, zero.catalog,
                           ctx.ids, ctx.titles, lexical.pair_features, catalog_columns=columns)

    candidates = scorer.top_k(dense.ranker, zero.ranker, queries.ranker.queries, weights, top_k)[0]
    train = training_lists(queries.ranker, candidates, list_size=cfg.ranking.list_size, negatives=cfg.ranking.negatives, seed=cfg.run.seed)
    train_inputs = inputs(train, queries.ranker, dense.ranker, zero.ranker)
    judged = judged_lists(queries.valid)
    judged_inputs = inputs(judged, queries.valid, dense.valid, zero.valid)
    valid_inputs = inputs(candidate_lists(valid_top[:, :top_k]), queries.valid, dense.valid, zero.valid)
    return RankerLists(candidates, train, train_inputs, judged, judged_inputs, valid_inputs)


def train_ranker(ctx: SearchContext, lists: RankerLists, queries: QuerySplits, valid_top: np.ndarray,
                 catalog_dense: np.ndarray) -> Ranker:
    """Train one head per candidate loss, each with its dense fusion weight; keep the best on the tuning half of valid."""
    rc = ctx.cfg.ranking
    losses = list(dict.fromkeys([rc.loss, *rc.candidate_losses])) if queries.tune.any() else [rc.loss]
    tried, best = [], None
    for loss in losses:
        head, info = _train_head(ctx, lists.train_inputs, lists.train, queries.retrieval_train, loss)
        info["dense_fusion"] = fusion = _fuse_dense(ctx, head, lists, queries, valid_top, catalog_dense)
        value = fusion["tune_half_e2e_ndcg@10"]
        tried.append({"loss": loss, "dense_weight": fusion["weight"], "tune_half_e2e_ndcg@10": value})
        if value is not None:  # None only without a tuning half, where a single loss is trained
            log.info("ranker with %s loss: end-to-end NDCG@10 %.4f on the tuning half (dense weight %g)" % (loss, value, fusion["weight"]))
        if best is None or value > best[0]:
            best = (value, head, info)
    value, head, info = best
    head.save_weights(str(ctx.run.ranker_weights))
    if len(losses) > 1:
        info["loss_selection"] = tried
        log.info("ranker loss kept: %s" % info["loss"])
    if value is not None:
        info["selection"] = selection = _ranker_or_retrieval(ctx, queries, valid_top, value)
        if selection["kept"] == RETRIEVAL:
            log.warning("the ranker does not improve on retrieval alone on the %d tuning queries (end-to-end NDCG@10 %.4f vs "
                        "%.4f): results are served in retrieval order" % (selection["n_queries"], value, selection["retrieval_tune_half_e2e_ndcg@10"]))
    return Ranker(head, info)


def keep_ranker(ranker_value: float, retrieval_value: float) -> str:
    """RANKER if the ranked order beats the retrieval order (ties go to retrieval: the ranker must earn its cost)."""
    return RANKER if ranker_value > retrieval_value else RETRIEVAL


def _ranker_or_retrieval(ctx: SearchContext, queries: QuerySplits, valid_top: np.ndarray, ranker_value: float) -> dict:
    """metrics.json's training.ranker.selection: the best head against the hybrid order on the tuning half of valid."""
    tune = queries.tune
    es = subset_eval_set(queries.valid, tune)
    # Rounded like the heads' values, so both sides of the comparison are the numbers the report shows.
    retrieval_value = round(float(ev.end_to_end_ndcg(es, valid_top[tune, : ctx.cfg.retrieval.top_k], 10)[0]), 4)
    return {"kept": keep_ranker(ranker_value, retrieval_value), "ranker_tune_half_e2e_ndcg@10": ranker_value,
            "retrieval_tune_half_e2e_ndcg@10": retrieval_value, "n_queries": int(tune.sum())}


def rank_valid(ctx: SearchContext, ranker: Ranker, lists: RankerLists, valid_top: np.ndarray) -> RankedValid:
    """Score valid's judged products (re-rank view) and re-order its hybrid top-k (end-to-end view).

    A head that was not kept still scores the judged products (the ranker export serves clients
    that bring their own candidates); the end-to-end order is then the retrieval order.
    """
    rerank_scores = ranker.head.predict(lists.judged_inputs, batch_size=256, verbose=0)
    judged_scores = rerank_scores[lists.judged.mask]  # back in the eval set's products order
    top = valid_top[:, : ctx.cfg.retrieval.top_k]
    if not ranker.kept:
        return RankedValid(judged_scores, top)
    e2e_scores = ranker.head.predict(lists.valid_inputs, batch_size=256, verbose=0)
    return RankedValid(judged_scores, rank_candidates(top, e2e_scores))


def _fuse_dense(ctx: SearchContext, head: Any, lists: RankerLists, queries: QuerySplits, valid_top: np.ndarray,
                catalog_dense: np.ndarray) -> dict:
    """Set the head's dense fusion: the weight of the catalog-z-scored two-tower score (chosen on the tuning half).

    The MLP's score is first divided by its standard deviation over the real training items, so
    the weight means the same whatever the loss's score scale.
    """
    rc = ctx.cfg.ranking
    train_scores = head.predict(lists.train_inputs, batch_size=256, verbose=0)[lists.train.mask]
    scale = float(np.std(train_scores)) or 1.0
    tune = queries.tune
    if not tune.any():
        weight = rc.dense_weight or 0.0
        head.set_dense_fusion(catalog_dense, weight, scale)
        return {"weight": weight, "score_scale": round(scale, 6), "trials": [], "tune_half_e2e_ndcg@10": None}
    head.set_dense_fusion(catalog_dense, 0.0, scale)
    grid = DENSE_WEIGHT_GRID if rc.dense_weight is None else (rc.dense_weight,)
    es = subset_eval_set(queries.valid, tune)
    part = {k: v[tune] for k, v in lists.valid_inputs.items()}
    mlp = head.predict(part, batch_size=256, verbose=0)  # already divided by the scale
    z = np.concatenate([head.dense_z(batch).numpy() for batch in tf.data.Dataset.from_tensor_slices(part).batch(256)])
    top = valid_top[tune, : ctx.cfg.retrieval.top_k]
    trials = []
    for weight in grid:
        value = ev.end_to_end_ndcg(es, rank_candidates(top, mlp + weight * z), 10)[0]
        trials.append({"weight": float(weight), "tune_half_e2e_ndcg@10": round(float(value), 4)})
    chosen = max(trials, key=lambda t: t["tune_half_e2e_ndcg@10"])  # first of equals: the smaller weight
    head.set_dense_fusion(catalog_dense, chosen["weight"], scale)
    return {"weight": chosen["weight"], "score_scale": round(scale, 6), "trials": trials,
            "tune_half_e2e_ndcg@10": chosen["tune_half_e2e_ndcg@10"]}


def _train_head(ctx: SearchContext, inputs: dict, lists: CandidateLists, retrieval_train: Judgments, loss: str) -> tuple[Any, dict]:
    """One ranker head trained with ``loss`` through the run's trainer; saved (weights, vocabulary) as the current head."""
    cfg, rc = ctx.cfg, ctx.cfg.ranking
    # Products of the two towers' queries only: the ranker's own (held-out) judged products must
    # not all be in the vocabulary, or "has an id embedding" would mark the judged ones.
    if not rc.product_id:
        vocabulary = None
    elif isinstance(retrieval_train, Judgments):
        vocabulary = sorted(set(ctx.ids[np.unique(retrieval_train.products)]))
    else:  # prepared: the products judged for the towers' queries, listed when prepared
        vocabulary = sorted(set(ctx.ids[retrieval_train.judged()["towers"]]))
    start = time.perf_counter()
    # Several small heads: no progress bar, one log line each.
    head, result = train_ranker_head(cfg, ctx.trainer("ranker-%s" % loss, progress=False), inputs, lists, vocabulary,
                                     loss=loss, learning_rate=ctx.scaled(rc.learning_rate), epochs=rc.epochs,
                                     catalog=ctx.data.catalog)
    seconds = time.perf_counter() - start
    head.save_weights(str(ctx.run.ranker_weights))
    ctx.drop_checkpoints("ranker-%s" % loss)
    ctx.run.ranker_vocabulary.write_text("\n".join(vocabulary or []) + "\n", encoding="utf-8")
    final = final_train_metrics(result)
    log.info("ranker: %d lists, loss %s, train %s" % (len(lists.rows), loss, ", ".join("%s %s" % kv for kv in final.items())))
    info = {
        "lists": int(len(lists.rows)),
        "list_width": int(lists.rows.shape[1]),
        "loss": loss,
        "epochs": rc.epochs,
        "seconds": round(seconds, 1),
        "final_train_metrics": final,
        "id_vocabulary": len(vocabulary or []),
    }
    columns = catalog_columns(cfg)
    if columns is not None:  # only then: metrics.json of runs without columns keeps its keys
        info["catalog_columns"] = columns
    return head, info
