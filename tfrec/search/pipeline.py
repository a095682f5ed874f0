"""`tfrec train` for search: baselines, two-tower retrieval, hybrid index, ranker, evaluation, report.

Order of work (each stage timed into metrics.json):
1. split the training queries: most train the two towers, a held-out share trains the ranker
   (there the two-tower scores are as unsure as on new queries, so the ranker learns how far
   to trust them);
2. lexical index (in-graph BM25) over the catalog, vocabulary from catalog + training queries;
3. the four baselines on valid (BM25 plain/stemmed with bm25s, zero-shot MiniLM, hybrid);
4. fine-tune the two towers (TFRS in-batch softmax) and encode the catalog;
5. hybrid weights chosen on the tuning half of valid (reported: both halves and all of valid);
6. ranker lists (judged + unjudged retrieved candidates) -> TF-Ranking listwise training;
7. valid: retrieval recall/MRR over the whole catalog, end-to-end NDCG@10 (top-k retrieved then
   ranked), re-rank NDCG of the judged products, seen/cold splits, paired bootstrap.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from tfrec import compat
from tfrec.config.loader import LoadedConfig
from tfrec.data.tables import Judgments, SearchData
from tfrec.evaluation import search as ev
from tfrec.search.hybrid import CatalogScorer, HybridWeights, tune_weights
from tfrec.search.models import ranker_head, retrieval_model
from tfrec.search.ranker_data import CandidateLists, candidate_lists, head_inputs, judged_lists, training_lists

tf = compat.tensorflow()

LEXICAL_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
ZERO_SHOT_GRID = (0.0, 0.25)
# Weights of the catalog-z-scored two-tower score added to the ranker's (scaled) score.
DENSE_WEIGHT_GRID = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
# Quality targets, as the search issue defines them: per view, the strongest of these baselines
# (measured in the same run) plus a margin. The z-scored hybrid baseline counts for the end-to-end
# view only; the other views compare with the single-signal baselines (it is still reported).
SINGLE = ("bm25", "bm25_stemmed", "minilm_zero_shot")
TARGETS = {
    "e2e": ("ndcg@10", 0.05, SINGLE + ("hybrid_bm25_minilm", "bm25_rerank_minilm")),
    "retrieval": ("recall@100", 0.05, SINGLE),
    "rerank": ("ndcg@10", 0.005, SINGLE),
}


def log(message: str) -> None:
    """Progress line on stdout (the CLI's output)."""
    print("[search] %s" % message, flush=True)


@dataclass
class Timer:
    """Seconds per named stage, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block; announce it."""
        log(name + " ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        log("%s: %.1f s" % (name, self.seconds[name]))


def split_queries(train: Judgments, holdout_fraction: float, seed: int) -> tuple[Judgments, Judgments]:
    """(retrieval part, ranker part) of the training judgments, split by query at random."""
    queries = np.unique(train.queries.astype(str))
    rng = np.random.default_rng(seed)
    n_hold = int(round(len(queries) * holdout_fraction))
    held = set(rng.permutation(queries)[:n_hold].tolist())
    in_held = np.fromiter((q in held for q in train.queries), bool, count=len(train))

    def part(keep: np.ndarray) -> Judgments:
        return Judgments(train.queries[keep], train.products[keep], train.labels[keep], train.source)

    return part(~in_held), part(in_held)


def split_eval_queries(n_queries: int, tune_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """bool masks (tune, holdout) over the valid queries."""
    rng = np.random.default_rng(seed + 1)
    tune = np.zeros(n_queries, bool)
    tune[rng.permutation(n_queries)[: int(round(n_queries * tune_fraction))]] = True
    return tune, ~tune


def subset_eval_set(es: ev.SearchEvalSet, keep: np.ndarray) -> ev.SearchEvalSet:
    """The eval set restricted to some queries (bool mask [Q])."""
    sizes = np.diff(es.offsets)
    judged = np.repeat(keep, sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes[keep])]).astype(np.int64)
    return ev.SearchEvalSet(es.queries[keep], offsets, es.products[judged], es.labels[judged], es.positive_relevance, es.seen)


def rank_candidates(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Candidates [Q, K] re-ordered by scores [Q, K] (stable: retrieval order breaks ties)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


class SearchTrainer:
    """Runs the whole search path for one config; results land in ``run_dir``."""

    def __init__(self, loaded: LoadedConfig, data: SearchData, run_dir: Path, warm_start: Optional[Path] = None) -> None:
        self.loaded, self.cfg, self.data, self.run_dir = loaded, loaded.config, data, Path(run_dir)
        from tfrec.training.strategy import describe, make_strategy

        if self.cfg.train.distribute.mixed_precision != "none":
            # tfrs.tasks.Retrieval has no dtype: under a mixed policy its matmul mixes float16 queries
            # with float32 candidates. The trainer supports it; this model does not yet.
            raise ValueError("train.distribute.mixed_precision=%s: the search two-tower model trains in float32 only "
                             "in this release (set it to none)" % self.cfg.train.distribute.mixed_precision)
        # Before any TensorFlow op: multi-worker and logical-device strategies need a fresh runtime.
        self.strategy = make_strategy(self.cfg.train.distribute)
        self.strategy_info = describe(self.strategy)
        self.previous = None
        self._previous_data_cache: Optional[SearchData] = None
        if warm_start is not None:
            from tfrec.training.warm_start import read_previous_run

            self.previous = read_previous_run(Path(warm_start))
        self.timer = Timer()
        self.titles = data.catalog.text().astype(str)
        self.ids = data.catalog.ids.astype(str)
        self.metrics: dict[str, Any] = {}

    # -- stages -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train, evaluate and report; returns the metrics dict (also written to metrics.json)."""
        from tfrec.lexical import LexicalIndex, LexicalScorer
        from tfrec.text.catalog import frozen_encoder

        cfg, data = self.cfg, self.data
        tf.keras.utils.set_random_seed(cfg.run.seed)
        retrieval_train, ranker_train = split_queries(data.train, cfg.ranking.holdout_fraction, cfg.run.seed)
        log(
            "training queries: %d for the two towers, %d held out for the ranker"
            % (len(np.unique(retrieval_train.queries)), len(np.unique(ranker_train.queries)))
        )
        seen = ev.seen_products(data.train, len(data.catalog))
        self.valid_es = ev.SearchEvalSet.from_judgments(data.valid, cfg.evaluation.positive_relevance, seen)
        ranker_es = ev.SearchEvalSet.from_judgments(ranker_train, cfg.evaluation.positive_relevance, seen)
        self.tune_mask, self.holdout_mask = split_eval_queries(self.valid_es.n_queries, cfg.evaluation.tune_fraction, cfg.run.seed)

        with self.timer.stage("lexical index"):
            self.lexical_index = LexicalIndex.build(list(self.titles), list(np.unique(data.train.queries.astype(str))))
            self.lexical_index.save(self.run_dir / "lexical")
            self.lexical = LexicalScorer(self.lexical_index, max_query_terms=cfg.retrieval.query_max_terms)
            self.pair_features = tf.function(self.lexical.pair_features, reduce_retracing=True)

        with self.timer.stage("zero-shot MiniLM vectors"):
            from tfrec.baselines.search import MiniLMBaseline

            self.zero_encoder = frozen_encoder(cfg.text)
            self.zero = zero = MiniLMBaseline(list(self.titles), cfg.text, progress=True, encoder=self.zero_encoder)
            self.catalog_zero = zero.catalog_vectors
            self.valid_zero = zero.encode(list(self.valid_es.queries))
            ranker_zero = zero.encode(list(ranker_es.queries))

        baselines = None
        if cfg.evaluation.baselines:
            with self.timer.stage("baselines"):
                from tfrec.baselines.search import evaluate_search_baselines

                baselines = evaluate_search_baselines(
                    list(self.titles), data.train, data.valid, cfg.text, ks=cfg.evaluation.ks,
                    positive_relevance=cfg.evaluation.positive_relevance, progress=True, minilm=self.zero,
                )

        with self.timer.stage("two-tower training"):
            self.retrieval, retrieval_info = self._train_retrieval(retrieval_train, ranker_es)
        with self.timer.stage("catalog and query encoding"):
            from tfrec.retrieval.train import encode_catalog, encode_queries

            self.catalog_dense = encode_catalog(self.retrieval, self.ids, self.titles, progress=True)
            self.valid_dense = encode_queries(self.retrieval, list(self.valid_es.queries))
            ranker_dense = encode_queries(self.retrieval, list(ranker_es.queries))
            self.scorer = CatalogScorer(self.catalog_dense, self.catalog_zero, self.lexical)

        with self.timer.stage("hybrid weights"):
            self.weights, trials = self._choose_weights()
        with self.timer.stage("retrieval on valid"):
            k_max = max(max(cfg.evaluation.ks), cfg.retrieval.top_k)
            self.valid_top, _ = self.scorer.top_k(
                self.valid_dense, self.valid_zero, self.valid_es.queries, self.weights, k_max
            )
            dense_only, index_info = self._dense_index(k_max)

        with self.timer.stage("ranker training"):
            ranker_candidates = self.scorer.top_k(ranker_dense, ranker_zero, ranker_es.queries, self.weights, cfg.retrieval.top_k)[0]
            lists = training_lists(
                ranker_es, ranker_candidates, list_size=cfg.ranking.list_size, negatives=cfg.ranking.negatives, seed=cfg.run.seed
            )
            inputs = self._head_inputs(lists, ranker_es.queries, ranker_dense, ranker_zero)
            judged = judged_lists(self.valid_es)
            judged_inputs = self._head_inputs(judged, self.valid_es.queries, self.valid_dense, self.valid_zero)
            top_k = cfg.retrieval.top_k
            candidates = candidate_lists(self.valid_top[:, :top_k])
            candidate_inputs = self._head_inputs(candidates, self.valid_es.queries, self.valid_dense, self.valid_zero)
            self.head, ranker_info = self._select_head(inputs, lists, retrieval_train, candidate_inputs)

        with self.timer.stage("ranker on valid"):
            rerank_scores = self.head.predict(judged_inputs, batch_size=256, verbose=0)
            judged_scores = rerank_scores[judged.mask]  # back in valid_es.products order
            e2e_scores = self.head.predict(candidate_inputs, batch_size=256, verbose=0)
            self.final_top = rank_candidates(self.valid_top[:, :top_k], e2e_scores)

        cross = None
        if cfg.ranking.cross_encoder.enabled:
            with self.timer.stage("cross-encoder"):
                cross = self._cross_encoder(ranker_es, ranker_candidates)

        previous_valid = None
        if self.previous is not None:
            with self.timer.stage("previous valid"):
                previous_valid = self._previous_valid()
                log("previous valid (%d queries): recall@100 %s -> %s" % (
                    previous_valid["n_queries"], previous_valid["before"].get("recall@100"), previous_valid["after"].get("recall@100")))

        with self.timer.stage("metrics and report"):
            retrieval_info["index"] = index_info
            self.metrics = self._metrics(baselines, dense_only, judged_scores, retrieval_info, ranker_info, trials, cross)
            if previous_valid is not None:
                self.metrics["continual"] = {"warm_start": retrieval_info.get("warm_start"), "previous_valid": previous_valid}
            self._save()
        return self.metrics

    def _train_retrieval(self, judgments: Judgments, holdout: Optional[ev.SearchEvalSet] = None) -> tuple[Any, dict]:
        from tfrec.retrieval.train import train_retrieval, training_pairs

        rc, cfg = self.cfg.retrieval, self.cfg
        continual = None
        if self.previous is not None:
            judgments, continual = self._with_replay(judgments)
        pairs = training_pairs(judgments, self.data.catalog, min_relevance=rc.min_relevance, max_pairs=rc.max_pairs, seed=cfg.run.seed)
        positives = pairs
        if rc.hard_negatives:
            from tfrec.retrieval.train import add_mined_negatives

            pairs = add_mined_negatives(pairs, judgments, self.data.catalog, self.lexical, depth=rc.hard_negative_depth, seed=cfg.run.seed)
        if not rc.sampling_correction:
            pairs.pop("sampling_probability")
            pairs.pop("negative_sampling_probability", None)
        epoch_pairs = None
        if rc.hard_negatives and rc.hard_negative_source == "model":
            epoch_pairs = self._model_negatives(positives, pairs, judgments)
        vocabulary = sorted(set(pairs["product_id"])) if rc.product_id else []
        if self.previous is not None and rc.product_id:
            from tfrec.training.warm_start import grown_vocabulary

            vocabulary = grown_vocabulary(self.previous.retrieval_vocabulary, pairs["product_id"])

        def build() -> Any:
            model = retrieval_model(cfg, vocabulary)
            if self.previous is not None:
                continual["weights"] = self._warm_start_towers(model)
                log("warm start from %s: %d ids kept, %d new" % (
                    self.previous.run_dir, len(self.previous.retrieval_vocabulary), len(vocabulary) - len(self.previous.retrieval_vocabulary)))
            return model

        log("two towers: %d pairs, %d products in the id vocabulary, BERT %s, %s strategy (%d replica(s))" % (
            len(pairs["query"]), len(vocabulary), rc.text_training, self.strategy_info["kind"], self.strategy_info["replicas"]))
        model, info = train_retrieval(
            build, pairs, epochs=rc.epochs, batch_size=rc.batch_size, learning_rate=self._scaled(rc.learning_rate),
            head_learning_rate=self._scaled(rc.head_learning_rate), seed=cfg.run.seed,
            trainer=self._trainer("retrieval", early_stopping=cfg.train.early_stopping_patience > 0 and holdout is not None),
            augmentation=cfg.train.augmentation,
            validate=self._dense_validation(holdout) if cfg.train.early_stopping_patience > 0 and holdout is not None else None,
            epoch_pairs=epoch_pairs,
        )
        info["hard_negatives"] = rc.hard_negative_source if rc.hard_negatives else None
        info["strategy"] = self.strategy_info
        model.save_weights(str(self.run_dir / "retrieval" / "weights"))
        self._drop_checkpoints("retrieval")
        (self.run_dir / "retrieval" / "product_vocabulary.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
        info["id_vocabulary"] = len(vocabulary)
        if continual is not None:
            info["warm_start"] = continual
        return model, info

    def _model_negatives(self, positives: dict, first: dict, judgments: Judgments) -> Any:
        """epoch_pairs(model, epoch): lexical negatives in epoch 0, then negatives mined by the towers as trained so far.

        Each epoch's pairs are saved beside the checkpoints, so a resumed run trains on the same negatives.
        """
        from tfrec.retrieval.train import mine_negatives, model_top_rows

        rc, seed = self.cfg.retrieval, self.cfg.run.seed
        folder = self.run_dir / "checkpoints" / "retrieval"

        def epoch_pairs(model: Any, epoch: int) -> dict:
            if epoch == 0:
                return first
            path = folder / ("negatives-epoch-%d.npz" % epoch)
            if path.is_file():
                with np.load(path, allow_pickle=False) as saved:
                    return {k: saved[k] for k in saved.files}
            started = time.perf_counter()
            mined = mine_negatives(positives, judgments, self.data.catalog, model_top_rows(model, self.data.catalog, rc.hard_negative_depth),
                                   depth=rc.hard_negative_depth, seed=seed + epoch)
            if not rc.sampling_correction:
                mined.pop("sampling_probability")
                mined.pop("negative_sampling_probability", None)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / (".negatives-epoch-%d.tmp.npz" % epoch)
            np.savez(tmp, **mined)
            tmp.replace(path)
            log("epoch %d: negatives mined by the current towers in %.0f s" % (epoch + 1, time.perf_counter() - started))
            return mined

        return epoch_pairs

    def _dense_validation(self, es: ev.SearchEvalSet) -> Any:
        """validate(model) for early stopping: dense retrieval on the ranker's held-out *train* queries (never valid)."""
        from tfrec.retrieval.train import encode_catalog, encode_queries

        def validate(model: Any) -> dict:
            catalog = encode_catalog(model, self.ids, self.titles, progress=False)
            queries = encode_queries(model, list(es.queries))
            k = min(max(max(self.cfg.evaluation.ks), 10), len(catalog))
            top = np.concatenate([ev.top_k(queries[i : i + 256] @ catalog.T, k)[0] for i in range(0, len(queries), 256)])
            recall = ev.recall_at_k(es, top, [k])
            return {"ndcg@10": ev.end_to_end_ndcg(es, top, 10)[0], "recall@%d" % k: recall[k], "mrr": ev.mrr(es, top)}

        return validate

    def _drop_checkpoints(self, name: str) -> None:
        """Training checkpoints only matter until the model is saved: the towers' take ~0.8 GB."""
        import shutil

        shutil.rmtree(self.run_dir / "checkpoints" / name, ignore_errors=True)

    def _scaled(self, learning_rate: float) -> float:
        from tfrec.training.strategy import scaled_learning_rate

        return scaled_learning_rate(learning_rate, self.strategy_info["replicas"], self.cfg.train.distribute.learning_rate_scaling)

    def _trainer(self, name: str, early_stopping: bool = False, progress: Optional[bool] = None) -> Any:
        """tfrec's trainer for one model of this run: strategy, checkpoints, TensorBoard, progress."""
        from tfrec.training.trainer import run_trainer

        tc = self.cfg.train
        return run_trainer(self.cfg, self.run_dir, name, self.strategy, progress=progress,
                           early_stopping_metric=tc.early_stopping_metric if early_stopping else None,
                           early_stopping_patience=tc.early_stopping_patience if early_stopping else 0)

    def _previous_data(self) -> SearchData:
        from tfrec.data.datasets import load_data
        from tfrec.data.slices import slice_for_config

        if self._previous_data_cache is None:
            self._previous_data_cache = slice_for_config(load_data(self.previous.loaded), self.previous.loaded.config)
        return self._previous_data_cache

    def _with_replay(self, judgments: Judgments) -> tuple[Judgments, dict]:
        """The new judgments plus ``train.continual.replay_fraction`` of the previous run's two-tower queries."""
        from tfrec.training.warm_start import concat_judgments, replay_judgments

        fraction = self.cfg.train.continual.replay_fraction
        info: dict = {"from": str(self.previous.run_dir), "replay_fraction": fraction}
        if fraction <= 0:
            return judgments, info
        old_cfg = self.previous.loaded.config
        old = self._previous_data()
        old_retrieval, _ = split_queries(old.train, old_cfg.ranking.holdout_fraction, old_cfg.run.seed)
        replay, info["replay"] = replay_judgments(old_retrieval, old.catalog, self.data.catalog, fraction, self.cfg.run.seed)
        log("replay: %(queries)d previous queries, %(judgments)d judgments (%(dropped)d dropped: product not in this catalog)" % info["replay"])
        return concat_judgments(judgments, replay), info

    def _warm_start_towers(self, model: Any) -> dict:
        """Initialise ``model`` from the previous run's two towers (grown id table keeps the old rows)."""
        from tfrec.search.models import build_retrieval
        from tfrec.training.warm_start import transfer_weights

        old = retrieval_model(self.previous.loaded.config, self.previous.retrieval_vocabulary)
        build_retrieval(old)
        old.load_weights(str(self.previous.retrieval_weights)).expect_partial()
        build_retrieval(model)
        return transfer_weights(old, model)

    def _previous_valid(self) -> Optional[dict]:
        """Retrieval metrics of this run's models on the previous run's valid queries, and the change since then."""
        from tfrec.retrieval.train import encode_queries
        from tfrec.training.warm_start import forgetting

        old = self._previous_data()
        rows = self.data.catalog.index_of(old.catalog.ids[old.valid.products])
        present = rows >= 0
        valid = Judgments(old.valid.queries[present], rows[present].astype(np.int32), old.valid.labels[present], old.valid.source)
        seen = ev.seen_products(self.data.train, len(self.data.catalog))
        es = ev.SearchEvalSet.from_judgments(valid, self.cfg.evaluation.positive_relevance, seen)
        queries = list(es.queries)
        k_max = max(max(self.cfg.evaluation.ks), self.cfg.retrieval.top_k)
        top, _ = self.scorer.top_k(encode_queries(self.retrieval, queries), self.zero.encode(queries), es.queries, self.weights, k_max)
        after = _retrieval(ev.retrieval_report(es, top, self.cfg.evaluation.ks))
        before = self.previous.metrics.get("systems", {}).get("tfrec_hybrid", {}).get("retrieval")
        keys = [k for k in after if k.startswith("recall@") or k == "mrr"]
        return {"n_queries": int(es.n_queries), "dropped_judgments": int((~present).sum()), "after": after,
                "before": {k: before[k] for k in keys if before and k in before}, "change": forgetting(before, after, keys)}

    def _dense_index(self, k: int) -> tuple[np.ndarray, dict]:
        """Dense-only top-k through the configured TFRS index, and its agreement with the other kind."""
        from tfrec.retrieval.index import build_index, search_index, top_k_overlap

        kinds = {}
        for kind in ("brute_force", "scann"):
            start = time.perf_counter()
            index = build_index(kind, self.catalog_dense, k=k)
            built = time.perf_counter() - start
            start = time.perf_counter()
            rows, _ = search_index(index, self.valid_dense)
            kinds[kind] = (rows, {"build_s": round(built, 2), "search_s": round(time.perf_counter() - start, 2)})
        overlap = top_k_overlap(kinds["brute_force"][0], kinds["scann"][0], 10)
        log("dense top-10 overlap ScaNN vs BruteForce: %.3f" % overlap)
        chosen = self.cfg.retrieval.index
        info = {"kind": chosen, "scann_vs_brute_force_top10_overlap": round(overlap, 4),
                **{"%s_%s" % (kind, key): value for kind, (_, t) in kinds.items() for key, value in t.items()}}
        return kinds[chosen][0].astype(np.int32), info

    def _choose_weights(self) -> tuple[HybridWeights, list[dict]]:
        rc = self.cfg.retrieval
        if rc.lexical_weight is not None and rc.zero_shot_weight is not None:
            return HybridWeights(1.0, rc.lexical_weight, rc.zero_shot_weight), []
        tune = self.tune_mask
        if not tune.any():
            return HybridWeights(1.0, rc.lexical_weight or 0.0, rc.zero_shot_weight or 0.0), []
        es = subset_eval_set(self.valid_es, tune)
        queries = self.valid_es.queries[tune]
        components = [
            (zd, zl, zz)
            for _, zd, zl, zz in self.scorer.z_components(self.valid_dense[tune], self.valid_zero[tune], queries)
        ]
        k = min(self.cfg.retrieval.top_k, len(self.data.catalog))
        lexical_grid = LEXICAL_GRID if rc.lexical_weight is None else (rc.lexical_weight,)
        zero_grid = ZERO_SHOT_GRID if rc.zero_shot_weight is None else (rc.zero_shot_weight,)
        best, trials = tune_weights(components, lambda rows: ev.recall_at_k(es, rows, [k])[k], k, lexical_grid, zero_grid)
        log("hybrid weights (recall@%d on %d tuning queries): %s" % (k, es.n_queries, best.as_dict()))
        return best, trials

    def _head_inputs(self, lists: CandidateLists, queries: np.ndarray, q_dense: np.ndarray, q_zero: np.ndarray) -> dict:
        return head_inputs(
            lists, np.asarray(queries).astype(str), q_dense, q_zero, self.catalog_dense, self.catalog_zero, self.ids, self.titles,
            self.pair_features,
        )

    def _select_head(self, inputs: dict, lists: CandidateLists, retrieval_train: Judgments, candidate_inputs: dict) -> tuple[Any, dict]:
        """Train one head per candidate loss, each with its dense fusion weight; keep the best on the tuning half of valid."""
        rc = self.cfg.ranking
        losses = list(dict.fromkeys([rc.loss, *rc.candidate_losses])) if self.tune_mask.any() else [rc.loss]
        tried, best = [], None
        for loss in losses:
            head, info = self._train_head(inputs, lists, retrieval_train, loss)
            info["dense_fusion"] = fusion = self._fuse_dense(head, inputs, lists, candidate_inputs)
            value = fusion["tune_half_e2e_ndcg@10"]
            tried.append({"loss": loss, "dense_weight": fusion["weight"], "tune_half_e2e_ndcg@10": value})
            if value is not None:  # None only without a tuning half, where a single loss is trained
                log("ranker with %s loss: end-to-end NDCG@10 %.4f on the tuning half (dense weight %g)" % (loss, value, fusion["weight"]))
            if best is None or value > best[0]:
                best = (value, head, info)
        _, head, info = best
        head.save_weights(str(self.run_dir / "ranker" / "weights"))
        if len(losses) > 1:
            info["loss_selection"] = tried
            log("ranker loss kept: %s" % info["loss"])
        return head, info

    def _fuse_dense(self, head: Any, inputs: dict, lists: CandidateLists, candidate_inputs: dict) -> dict:
        """Set the head's dense fusion: the weight of the catalog-z-scored two-tower score (chosen on the tuning half).

        The MLP's score is first divided by its standard deviation over the real training items, so
        the weight means the same whatever the loss's score scale.
        """
        rc = self.cfg.ranking
        train_scores = head.predict(inputs, batch_size=256, verbose=0)[lists.mask]
        scale = float(np.std(train_scores)) or 1.0
        tune = self.tune_mask
        if not tune.any():
            weight = rc.dense_weight or 0.0
            head.set_dense_fusion(self.catalog_dense, weight, scale)
            return {"weight": weight, "score_scale": round(scale, 6), "trials": [], "tune_half_e2e_ndcg@10": None}
        head.set_dense_fusion(self.catalog_dense, 0.0, scale)
        grid = DENSE_WEIGHT_GRID if rc.dense_weight is None else (rc.dense_weight,)
        es = subset_eval_set(self.valid_es, tune)
        part = {k: v[tune] for k, v in candidate_inputs.items()}
        mlp = head.predict(part, batch_size=256, verbose=0)  # already divided by the scale
        z = np.concatenate([head.dense_z(batch).numpy() for batch in tf.data.Dataset.from_tensor_slices(part).batch(256)])
        top = self.valid_top[tune, : self.cfg.retrieval.top_k]
        trials = []
        for weight in grid:
            value = ev.end_to_end_ndcg(es, rank_candidates(top, mlp + weight * z), 10)[0]
            trials.append({"weight": float(weight), "tune_half_e2e_ndcg@10": round(float(value), 4)})
        chosen = max(trials, key=lambda t: t["tune_half_e2e_ndcg@10"])  # first of equals: the smaller weight
        head.set_dense_fusion(self.catalog_dense, chosen["weight"], scale)
        return {"weight": chosen["weight"], "score_scale": round(scale, 6), "trials": trials,
                "tune_half_e2e_ndcg@10": chosen["tune_half_e2e_ndcg@10"]}

    def _train_head(self, inputs: dict, lists: CandidateLists, retrieval_train: Judgments, loss: str) -> tuple[Any, dict]:
        from tfrec.ranking.losses import ranking_loss
        from tfrec.ranking.metrics import ranking_metrics
        from tfrec.training.trainer import epoch_seed

        rc = self.cfg.ranking
        # Products of the two towers' queries only: the ranker's own (held-out) judged products must
        # not all be in the vocabulary, or "has an id embedding" would mark the judged ones.
        vocabulary = sorted(set(self.ids[np.unique(retrieval_train.products)])) if rc.product_id else None
        tf.keras.utils.set_random_seed(self.cfg.run.seed)
        learning_rate = self._scaled(rc.learning_rate)

        def build() -> Any:
            head = ranker_head(self.cfg, vocabulary)
            head.adapt_lexical(inputs["lexical"][lists.mask])
            head.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss=ranking_loss(loss), metrics=ranking_metrics((5, 10)))
            head({k: v[:1] for k, v in inputs.items()})  # built even when it trains 0 epochs (smoke runs): it is saved and exported
            return head

        def dataset(epoch: int) -> Any:
            n = len(lists.labels)
            return (tf.data.Dataset.from_tensor_slices((inputs, lists.labels))
                    .shuffle(n, seed=epoch_seed(self.cfg.run.seed, epoch), reshuffle_each_iteration=False).batch(rc.batch_size))

        start = time.perf_counter()
        # Several small heads: no progress bar, one log line each.
        head, result = self._trainer("ranker-%s" % loss, progress=False).fit(build, dataset, rc.epochs)
        history = {k: [h[k] for h in result.history if k in h] for k in (result.history[-1] if result.history else {})
                   if k not in ("epoch", "seconds", "examples_per_second") and not k.startswith("learning_rate")}
        seconds = time.perf_counter() - start
        head.save_weights(str(self.run_dir / "ranker" / "weights"))
        self._drop_checkpoints("ranker-%s" % loss)
        (self.run_dir / "ranker" / "product_vocabulary.txt").write_text("\n".join(vocabulary or []) + "\n", encoding="utf-8")
        final = {k: round(float(v[-1]), 4) for k, v in history.items()}
        log("ranker: %d lists, loss %s, train %s" % (len(lists.rows), loss, final))
        return head, {
            "lists": int(len(lists.rows)),
            "list_width": int(lists.rows.shape[1]),
            "loss": loss,
            "epochs": rc.epochs,
            "seconds": round(seconds, 1),
            "final_train_metrics": final,
            "id_vocabulary": len(vocabulary or []),
        }

    def _cross_encoder(self, ranker_es: ev.SearchEvalSet, ranker_candidates: np.ndarray) -> dict:
        from tfrec.ranking.cross_encoder import CrossEncoderRanker, score_lists, train_cross_encoder
        from tfrec.text.model_files import resolve_model_files

        ce = self.cfg.ranking.cross_encoder
        lists = training_lists(ranker_es, ranker_candidates, list_size=self.cfg.ranking.list_size, negatives=ce.negatives, seed=self.cfg.run.seed)
        if ce.max_lists and len(lists.rows) > ce.max_lists:
            keep = np.random.default_rng(self.cfg.run.seed).permutation(len(lists.rows))[: ce.max_lists]
            lists = CandidateLists(lists.query_index[keep], lists.rows[keep], lists.labels[keep])
        titles = np.where(lists.mask, self.titles[np.maximum(lists.rows, 0)], "")
        model = CrossEncoderRanker(resolve_model_files(self.cfg.text.model_dir), max_length=ce.max_length)
        info = train_cross_encoder(
            model, ranker_es.queries[lists.query_index].astype(str), titles, lists.labels, loss=self.cfg.ranking.loss,
            epochs=ce.epochs, batch_size=ce.batch_size, learning_rate=ce.learning_rate, seed=self.cfg.run.seed,
        )
        judged = judged_lists(self.valid_es)
        judged_titles = np.where(judged.mask, self.titles[np.maximum(judged.rows, 0)], "")
        rerank = score_lists(model, self.valid_es.queries.astype(str), judged_titles)
        top_k = self.cfg.retrieval.top_k
        cand = self.valid_top[:, :top_k]
        e2e = score_lists(model, self.valid_es.queries.astype(str), self.titles[cand])
        return {"info": info, "judged_scores": rerank[judged.mask], "top": rank_candidates(cand, e2e)}

    # -- evaluation ---------------------------------------------------------------------------

    def _metrics(self, baselines, dense_only, judged_scores, retrieval_info, ranker_info, trials, cross) -> dict:
        cfg, es = self.cfg, self.valid_es
        ks = sorted(cfg.evaluation.ks)
        systems: dict[str, dict] = {}
        per_query: dict[str, dict[str, np.ndarray]] = {}
        if baselines:
            labels = {
                "bm25": "BM25 (bm25s)", "bm25_stemmed": "Stemmed BM25 (bm25s + PyStemmer)",
                "minilm_zero_shot": "Zero-shot MiniLM cosine", "hybrid_bm25_minilm": "Hybrid: z(stemmed BM25) + z(MiniLM)",
                "bm25_rerank_minilm": "Stemmed BM25 top-100 re-ranked by MiniLM",
            }
            for name, label in labels.items():
                if name in baselines:
                    systems[name] = _system_from_baseline(label, baselines[name])
                    per_query[name] = baselines["per_query"].get(name, {})
            systems["random"] = {"label": "Random order", "kind": "reference", "retrieval": None, "e2e": None,
                                 "rerank": {"ndcg@10": baselines["random"]["ndcg@10_rerank"]}}
            systems["perfect"] = {"label": "Perfect order", "kind": "reference", "retrieval": None, "e2e": None,
                                  "rerank": {"ndcg@10": baselines["perfect"]["ndcg@10_rerank"]}}
        dense_report = ev.retrieval_report(es, dense_only, ks)
        systems["tfrec_two_tower"] = _system("tfrec two-tower (fine-tuned MiniLM + id)", dense_report, None)
        hybrid_report = ev.retrieval_report(es, self.valid_top, ks)
        systems["tfrec_hybrid"] = _system("tfrec hybrid retrieval (dense + in-graph BM25 + zero-shot)", hybrid_report, None)
        final_report = ev.retrieval_report(es, self.final_top, [k for k in ks if k <= self.final_top.shape[1]] or [self.final_top.shape[1]])
        rerank_mean, rerank_values = ev.rerank_ndcg(es, judged_scores, 10)
        rerank5, _ = ev.rerank_ndcg(es, judged_scores, 5)
        rerank = {"ndcg@5": rerank5, "ndcg@10": rerank_mean, **_split(es, rerank_values, "ndcg@10")}
        systems["tfrec_search"] = {
            "label": "tfrec search: hybrid top-%d + ranker" % cfg.retrieval.top_k, "kind": "tfrec",
            "retrieval": None, "e2e": _e2e(final_report), "rerank": rerank,
        }
        per_query["tfrec_search"] = {"ndcg@10_e2e": ev.end_to_end_ndcg(es, self.final_top, 10)[1], "ndcg@10_rerank": rerank_values}
        if cross is not None:
            c_mean, c_values = ev.rerank_ndcg(es, cross["judged_scores"], 10)
            c_report = ev.retrieval_report(es, cross["top"], [10])
            systems["tfrec_cross_encoder"] = {
                "label": "tfrec hybrid top-%d + cross-encoder" % cfg.retrieval.top_k, "kind": "tfrec", "retrieval": None,
                "e2e": _e2e(c_report), "rerank": {"ndcg@10": c_mean, **_split(es, c_values, "ndcg@10")},
            }
            per_query["tfrec_cross_encoder"] = {"ndcg@10_e2e": ev.end_to_end_ndcg(es, cross["top"], 10)[1], "ndcg@10_rerank": c_values}

        for name, top in (("tfrec_two_tower", dense_only), ("tfrec_hybrid", self.valid_top)):
            per_query[name] = {"recall@%d" % k: v for k, v in ev.recall_at_k_per_query(es, top, [k for k in ks if k <= top.shape[1]]).items()}
        self.per_query = per_query
        significance, targets = self._significance_and_targets(systems, per_query)
        holdout = self._halves()
        notes = [
            "Valid split (%d queries); nothing here trained on it. The hybrid weights %s were chosen on a seeded "
            "tuning half of valid (%d queries, by recall@%d over the catalog); the other half (%d queries) is "
            "untouched: end-to-end NDCG@10 there %.4f (tuning half %.4f), recall@100 there %.4f (tuning half %.4f)."
            % (es.n_queries, self.weights.as_dict(), int(self.tune_mask.sum()), cfg.retrieval.top_k, int(self.holdout_mask.sum()),
               holdout["holdout"]["e2e_ndcg@10"], holdout["tune"]["e2e_ndcg@10"],
               holdout["holdout"]["recall@100"], holdout["tune"]["recall@100"]),
            "Seen/cold: a product is 'seen' if any training judgment names it; cold products take the text path "
            "(their id embedding is exactly zero). Compare the seen and cold columns: a model that used "
            "'unseen in training' as a signal would show it there.",
            "The ranker trained on %d held-out training queries (not used by the two towers). Its loss (%s) and the "
            "weight of the catalog-z-scored two-tower score added to its score (%g) were chosen on the same tuning half."
            % (ranker_info["lists"], ranker_info["loss"], ranker_info["dense_fusion"]["weight"]),
        ]
        return {
            "dataset": self.data.name, "split": "valid", "run_name": self.cfg.run.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "n_queries": {"rerank": es.n_queries, "retrieval": hybrid_report["n_queries"], "e2e": es.n_queries},
            "catalog_size": len(self.data.catalog),
            "systems": systems,
            "significance": significance,
            "targets": targets,
            "timings": dict(self.timer.seconds),
            "training": {
                "retrieval": {**retrieval_info, "hybrid_weights": self.weights.as_dict()},
                "ranker": ranker_info,
                **({"cross_encoder": cross["info"]} if cross else {}),
            },
            "hybrid_weight_trials": trials,
            "halves": holdout,
            "notes": notes,
        }

    def _halves(self) -> dict:
        out = {}
        for name, mask in (("tune", self.tune_mask), ("holdout", self.holdout_mask)):
            if not mask.any():
                out[name] = {"e2e_ndcg@10": float("nan"), "recall@100": float("nan"), "n_queries": 0}
                continue
            es = subset_eval_set(self.valid_es, mask)
            k = min(100, self.valid_top.shape[1])
            out[name] = {
                "e2e_ndcg@10": ev.end_to_end_ndcg(es, self.final_top[mask], 10)[0],
                "recall@100": ev.recall_at_k(es, self.valid_top[mask], [k])[k],
                "n_queries": int(mask.sum()),
            }
        return out

    def _significance_and_targets(self, systems: dict, per_query: dict) -> tuple[list, list]:
        significance, targets = [], []
        views = {"e2e": "ndcg@10_e2e", "rerank": "ndcg@10_rerank"}
        for view, key in views.items():
            best = _best_baseline(systems, view, "ndcg@10", TARGETS[view][2])
            if best is None:
                continue
            for system in ("tfrec_search", "tfrec_cross_encoder"):
                if system in per_query and key in per_query.get(best, {}):
                    result = ev.paired_bootstrap(
                        per_query[system][key], per_query[best][key], self.cfg.evaluation.bootstrap_resamples, self.cfg.run.seed
                    )
                    significance.append({"view": view, "system": system, "versus": best, "metric": "ndcg@10", **result,
                                         "n_queries": int(np.sum(~np.isnan(per_query[system][key])))})
        for view, (metric, margin, eligible) in TARGETS.items():
            best = _best_baseline(systems, view, metric, eligible)
            system = "tfrec_hybrid" if view == "retrieval" else "tfrec_search"
            if best is None or systems.get(system, {}).get(view) is None or metric not in systems[system][view]:
                continue
            target = systems[best][view][metric] + margin
            value = systems[system][view][metric]
            targets.append({"view": view, "metric": metric, "system": system, "target": round(target, 4),
                            "value": value, "met": bool(value >= target), "strongest_baseline": best})
        return significance, targets

    def _save(self) -> None:
        from tfrec.reports.evaluation import evaluate_run

        path = self.run_dir / "metrics.json"
        path.write_text(json.dumps(_jsonable(self.metrics), indent=2) + "\n", encoding="utf-8")
        (self.run_dir / "search_config.json").write_text(
            json.dumps({"hybrid_weights": self.weights.as_dict(), "top_k": self.cfg.retrieval.top_k}, indent=2) + "\n", encoding="utf-8"
        )
        np.save(self.run_dir / "retrieval" / "catalog_vectors.npy", self.catalog_dense)
        from tfrec.evaluation.compare import PER_QUERY_FILE, write_per_query

        write_per_query(self.run_dir / PER_QUERY_FILE, self.valid_es.queries, self.per_query)
        from tfrec.evaluation.results import TOP_RESULTS_FILE, top_results_record, write_top_results

        write_top_results(self.run_dir / TOP_RESULTS_FILE, top_results_record(
            self.valid_es, self.final_top, self.data.catalog.ids, self.titles, system="tfrec_search"))
        report = evaluate_run(self.run_dir)
        print(report.summary, flush=True)
        log("report: %s (charts: %s)" % (report.html, ", ".join(p.name for p in report.figures) or "none"))


def _e2e(report: dict) -> dict:
    out = {"ndcg@10": report["ndcg@10_e2e"]}
    for group in ("seen", "cold"):
        if group in report:
            out[group] = {"ndcg@10": report[group]["ndcg@10_e2e"], "n_queries": report[group]["n_queries_ndcg"]}
    return out


def _retrieval(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k.startswith("recall@") or k == "mrr"}
    for group in ("seen", "cold"):
        if group in report:
            out[group] = {k: v for k, v in report[group].items() if k.startswith("recall@") or k == "n_queries"}
    return out


def _system(label: str, report: dict, rerank: Optional[dict]) -> dict:
    return {"label": label, "kind": "tfrec", "retrieval": _retrieval(report), "e2e": _e2e(report), "rerank": rerank}


def _system_from_baseline(label: str, report: dict) -> dict:
    rerank = None
    if "ndcg@10_rerank" in report:
        rerank = {"ndcg@10": report["ndcg@10_rerank"]}
        for group in ("seen", "cold"):
            if group in report and "ndcg@10_rerank" in report[group]:
                rerank[group] = {"ndcg@10": report[group]["ndcg@10_rerank"]}
    return {"label": label, "kind": "baseline", "retrieval": _retrieval(report), "e2e": _e2e(report), "rerank": rerank}


def _split(es: ev.SearchEvalSet, values: np.ndarray, key: str) -> dict:
    groups = ev.split_by_seen(es, values)
    return {g: {key: groups[g]["mean"], "n_queries": groups[g]["n_queries"]} for g in ("seen", "cold")}


def _best_baseline(systems: dict, view: str, metric: str, eligible: tuple) -> Optional[str]:
    scored = [(systems[n][view][metric], n) for n in eligible if n in systems and systems[n].get(view) and metric in systems[n][view]]
    return max(scored)[1] if scored else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def train_search(loaded: LoadedConfig, data: SearchData, run_dir: Path, warm_start: Optional[Path] = None) -> dict:
    """Train and evaluate the search path of a config (from a previous run's towers with ``warm_start``); returns the metrics."""
    return SearchTrainer(loaded, data, run_dir, warm_start=warm_start).run()
