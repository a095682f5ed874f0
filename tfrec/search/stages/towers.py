"""The two towers (TFRS in-batch softmax over fine-tuned MiniLM + id): training, saving, encoding.

Training optionally replays and warm-starts from a previous run, adds negatives mined lexically
or by the towers themselves, and stops early on dense retrieval over the ranker's held-out
*training* queries (never valid).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from tfrec.data.tables import Judgments
from tfrec.evaluation import search as ev
from tfrec.evaluation.chunks import row_chunk
from tfrec.retrieval.pair_stream import write_pair_shards
from tfrec.retrieval.train import (
    add_mined_negatives, encode_catalog, encode_queries, mine_negatives, model_top_rows, train_retrieval, training_pairs,
)
from tfrec.search.models import build_retrieval, catalog_columns, retrieval_model
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.continual import Previous
from tfrec.search.stages.lexical import Lexical
from tfrec.search.stages.queries import QuerySplits, split_queries
from tfrec.training.warm_start import concat_judgments, grown_vocabulary, replay_judgments, transfer_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Towers:
    """The trained two-tower model (weights and id vocabulary saved in the run folder) and its training record."""

    model: Any
    info: dict  # metrics.json's training.retrieval, before the index and hybrid weights are added


@dataclass(frozen=True, eq=False)
class DenseVectors:
    """Fine-tuned two-tower vectors of the catalog, the valid queries and the ranker's training queries."""

    catalog: np.ndarray
    valid: np.ndarray
    ranker: np.ndarray


def train_towers(ctx: SearchContext, lexical: Lexical, judgments: Judgments, holdout: Optional[ev.SearchEvalSet] = None,
                 previous: Optional[Previous] = None) -> Towers:
    """Train the two towers on ``judgments`` (early stopping on ``holdout``), save weights and vocabulary."""
    rc, cfg = ctx.cfg.retrieval, ctx.cfg
    continual = None
    stream: Optional[Callable[[int, int], Any]] = None
    epoch_pairs = None
    if not isinstance(judgments, Judgments):
        # A prepared dataset: the pairs stream from shards written in one pass (preflight refused what needs them in memory).
        shards = write_pair_shards(judgments, len(ctx.data.catalog), ctx.run.checkpoint_dir("retrieval") / "pairs",
                                   min_relevance=rc.min_relevance, lexical=lexical.scorer if rc.hard_negatives else None,
                                   depth=rc.hard_negative_depth, seed=cfg.run.seed, progress=cfg.train.progress)

        def streamed_batches(seed: int, batch_size: int) -> Any:
            return shards.batches(ctx.ids, ctx.titles, batch_size=batch_size, seed=seed, shuffle_buffer=cfg.data.shuffle_buffer,
                                  sampling_correction=rc.sampling_correction)

        stream = streamed_batches
        pairs: Any = shards.pairs
        n_pairs = shards.pairs
        vocabulary = shards.vocabulary(ctx.ids) if rc.product_id else []
    else:
        if previous is not None:
            judgments, continual = _with_replay(ctx, previous, judgments)
        pairs = training_pairs(judgments, ctx.data.catalog, min_relevance=rc.min_relevance, max_pairs=rc.max_pairs, seed=cfg.run.seed)
        positives = pairs
        if rc.hard_negatives:
            pairs = add_mined_negatives(pairs, judgments, ctx.data.catalog, lexical.scorer, depth=rc.hard_negative_depth, seed=cfg.run.seed)
        if not rc.sampling_correction:
            pairs.pop("sampling_probability")
            pairs.pop("negative_sampling_probability", None)
        if rc.hard_negatives and rc.hard_negative_source == "model":
            epoch_pairs = _model_negatives(ctx, positives, pairs, judgments)
        n_pairs = len(pairs["query"])
        vocabulary = sorted(set(pairs["product_id"])) if rc.product_id else []
        if previous is not None and rc.product_id:
            vocabulary = grown_vocabulary(previous.run.retrieval_vocabulary, pairs["product_id"])

    def build() -> Any:
        model = retrieval_model(cfg, vocabulary, catalog=ctx.data.catalog)
        if previous is not None:
            continual["weights"] = _warm_start_towers(previous, model)
            log.info("warm start from %s: %d ids kept, %d new" % (
                previous.run.run_dir, len(previous.run.retrieval_vocabulary), len(vocabulary) - len(previous.run.retrieval_vocabulary)))
        return model

    log.info("two towers: %d pairs, %d products in the id vocabulary, BERT %s, %s strategy (%d replica(s))" % (
        n_pairs, len(vocabulary), rc.text_training, ctx.strategy_info["kind"], ctx.strategy_info["replicas"]))
    early_stopping = cfg.train.early_stopping_patience > 0 and holdout is not None
    model, info = train_retrieval(
        build, pairs, epochs=rc.epochs, batch_size=rc.batch_size, learning_rate=ctx.scaled(rc.learning_rate),
        head_learning_rate=ctx.scaled(rc.head_learning_rate), seed=cfg.run.seed,
        trainer=ctx.trainer("retrieval", early_stopping=early_stopping),
        augmentation=cfg.train.augmentation,
        validate=_dense_validation(ctx, holdout) if early_stopping else None,
        epoch_pairs=epoch_pairs,
        stream=stream,
    )
    info["hard_negatives"] = rc.hard_negative_source if rc.hard_negatives else None
    info["strategy"] = ctx.strategy_info
    model.save_weights(str(ctx.run.retrieval_weights))
    ctx.drop_checkpoints("retrieval")
    ctx.run.retrieval_vocabulary.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    info["id_vocabulary"] = len(vocabulary)
    columns = catalog_columns(cfg)
    if columns is not None:  # only then: metrics.json of runs without columns keeps its keys
        info["catalog_columns"] = columns
    if continual is not None:
        info["warm_start"] = continual
    return Towers(model, info)


def encode_vectors(ctx: SearchContext, towers: Towers, queries: QuerySplits) -> DenseVectors:
    """The catalog's and the queries' two-tower vectors."""
    return DenseVectors(
        encode_catalog(towers.model, ctx.ids, ctx.titles, progress=True),
        encode_queries(towers.model, list(queries.valid.queries)),
        encode_queries(towers.model, list(queries.ranker.queries)),
    )


def _model_negatives(ctx: SearchContext, positives: dict, first: dict, judgments: Judgments) -> Callable[[Any, int], dict]:
    """epoch_pairs(model, epoch): lexical negatives in epoch 0, then negatives mined by the towers as trained so far.

    Each epoch's pairs are saved beside the checkpoints, so a resumed run trains on the same negatives.
    """
    rc, seed, catalog = ctx.cfg.retrieval, ctx.cfg.run.seed, ctx.data.catalog
    folder = ctx.run.checkpoint_dir("retrieval")

    def epoch_pairs(model: Any, epoch: int) -> dict:
        if epoch == 0:
            return first
        path = folder / ("negatives-epoch-%d.npz" % epoch)
        if path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                return {k: saved[k] for k in saved.files}
        started = time.perf_counter()
        mined = mine_negatives(positives, judgments, catalog, model_top_rows(model, catalog, rc.hard_negative_depth),
                               depth=rc.hard_negative_depth, seed=seed + epoch)
        if not rc.sampling_correction:
            mined.pop("sampling_probability")
            mined.pop("negative_sampling_probability", None)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (".negatives-epoch-%d.tmp.npz" % epoch)
        np.savez(tmp, **mined)
        tmp.replace(path)
        log.info("epoch %d: negatives mined by the current towers in %.0f s" % (epoch + 1, time.perf_counter() - started))
        return mined

    return epoch_pairs


def _dense_validation(ctx: SearchContext, es: ev.SearchEvalSet) -> Callable[[Any], dict]:
    """validate(model) for early stopping: dense retrieval on the ranker's held-out *train* queries (never valid)."""

    def validate(model: Any) -> dict:
        catalog = encode_catalog(model, ctx.ids, ctx.titles, progress=False)
        queries = encode_queries(model, list(es.queries))
        k = min(max(max(ctx.cfg.evaluation.ks), 10), len(catalog))
        step = row_chunk(len(catalog), most=256)  # one chunk's scores stay ~256 MB whatever the catalog size
        top = np.concatenate([ev.top_k(queries[i : i + step] @ catalog.T, k)[0] for i in range(0, len(queries), step)])
        recall = ev.recall_at_k(es, top, [k])
        return {"ndcg@10": ev.end_to_end_ndcg(es, top, 10)[0], "recall@%d" % k: recall[k], "mrr": ev.mrr(es, top)}

    return validate


def _with_replay(ctx: SearchContext, previous: Previous, judgments: Judgments) -> tuple[Judgments, dict]:
    """The new judgments plus ``train.continual.replay_fraction`` of the previous run's two-tower queries."""
    fraction = ctx.cfg.train.continual.replay_fraction
    info: dict = {"from": str(previous.run.run_dir), "replay_fraction": fraction}
    if fraction <= 0:
        return judgments, info
    old_cfg, old = previous.run.loaded.config, previous.data
    old_retrieval, _ = split_queries(old.train, old_cfg.ranking.holdout_fraction, old_cfg.run.seed)
    replay, info["replay"] = replay_judgments(old_retrieval, old.catalog, ctx.data.catalog, fraction, ctx.cfg.run.seed)
    log.info("replay: %(queries)d previous queries, %(judgments)d judgments (%(dropped)d dropped: product not in this catalog)"
             % info["replay"])
    return concat_judgments(judgments, replay), info


def _warm_start_towers(previous: Previous, model: Any) -> dict:
    """Initialise ``model`` from the previous run's two towers (grown id table keeps the old rows)."""
    old = retrieval_model(previous.run.loaded.config, previous.run.retrieval_vocabulary, catalog=previous.data.catalog)
    build_retrieval(old)
    old.load_weights(str(previous.run.retrieval_weights)).expect_partial()
    build_retrieval(model)
    return transfer_weights(old, model)
