"""Hybrid retrieval: weights chosen on the tuning half of valid, top-k on valid, the dense TFRS index compared."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from tfrec.evaluation import search as ev
from tfrec.retrieval.index import build_index, search_index, top_k_overlap
from tfrec.search.hybrid import CatalogScorer, HybridWeights, tune_weights
from tfrec.search.stages.baselines import ZeroShot
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.queries import QuerySplits, subset_eval_set
from tfrec.search.stages.towers import DenseVectors

log = logging.getLogger(__name__)

LEXICAL_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
ZERO_SHOT_GRID = (0.0, 0.25)


@dataclass(frozen=True, eq=False)
class HybridChoice:
    """The hybrid weights and the trials they were chosen from (empty when the config fixes them)."""

    weights: HybridWeights
    trials: list[dict]


@dataclass(frozen=True, eq=False)
class ValidRetrieval:
    """Top-k catalog rows of the valid queries: hybrid, dense only (through the TFRS index), and the index's record."""

    top: np.ndarray  # [Q, max(ks, top_k)] hybrid
    dense_only: np.ndarray  # [Q, max(ks, top_k)] the configured TFRS index
    index_info: dict


def choose_weights(ctx: SearchContext, scorer: CatalogScorer, queries: QuerySplits, dense: DenseVectors,
                   zero: ZeroShot) -> HybridChoice:
    """Hybrid weights by recall@top_k on the tuning half of valid (the grids where the config leaves them open)."""
    rc = ctx.cfg.retrieval
    if rc.lexical_weight is not None and rc.zero_shot_weight is not None:
        return HybridChoice(HybridWeights(1.0, rc.lexical_weight, rc.zero_shot_weight), [])
    tune = queries.tune
    if not tune.any():
        return HybridChoice(HybridWeights(1.0, rc.lexical_weight or 0.0, rc.zero_shot_weight or 0.0), [])
    es = subset_eval_set(queries.valid, tune)
    # A generator: tune_weights reads each batch once, so the tuning queries' scores are never all in memory.
    components = (
        (zd, zl, zz)
        for _, zd, zl, zz in scorer.z_components(dense.valid[tune], zero.valid[tune], queries.valid.queries[tune])
    )
    k = min(rc.top_k, len(ctx.data.catalog))
    lexical_grid = LEXICAL_GRID if rc.lexical_weight is None else (rc.lexical_weight,)
    zero_grid = ZERO_SHOT_GRID if rc.zero_shot_weight is None else (rc.zero_shot_weight,)
    best, trials = tune_weights(components, lambda rows: ev.recall_at_k(es, rows, [k])[k], k, lexical_grid, zero_grid)
    log.info("hybrid weights (recall@%d on %d tuning queries): %s"
             % (k, es.n_queries, ", ".join("%s %s" % kv for kv in best.as_dict().items())))
    return HybridChoice(best, trials)


def retrieve_valid(ctx: SearchContext, scorer: CatalogScorer, weights: HybridWeights, queries: QuerySplits,
                   dense: DenseVectors, zero: ZeroShot) -> ValidRetrieval:
    """Hybrid top-k of the valid queries, and dense-only top-k through the configured TFRS index."""
    k_max = max(max(ctx.cfg.evaluation.ks), ctx.cfg.retrieval.top_k)
    top, _ = scorer.top_k(dense.valid, zero.valid, queries.valid.queries, weights, k_max)
    dense_only, index_info = _dense_index(ctx, dense, k_max)
    return ValidRetrieval(top, dense_only, index_info)


def _dense_index(ctx: SearchContext, dense: DenseVectors, k: int) -> tuple[np.ndarray, dict]:
    """Dense-only top-k through the configured TFRS index, and its agreement with the other kind."""
    kinds = {}
    for kind in ("brute_force", "scann"):
        start = time.perf_counter()
        index = build_index(kind, dense.catalog, k=k)
        built = time.perf_counter() - start
        start = time.perf_counter()
        rows, _ = search_index(index, dense.valid)
        kinds[kind] = (rows, {"build_s": round(built, 2), "search_s": round(time.perf_counter() - start, 2)})
    overlap = top_k_overlap(kinds["brute_force"][0], kinds["scann"][0], 10)
    log.info("dense top-10 overlap ScaNN vs BruteForce: %.3f" % overlap)
    chosen = ctx.cfg.retrieval.index
    info = {"kind": chosen, "scann_vs_brute_force_top10_overlap": round(overlap, 4),
            **{"%s_%s" % (kind, key): value for kind, (_, t) in kinds.items() for key, value in t.items()}}
    return kinds[chosen][0].astype(np.int32), info
