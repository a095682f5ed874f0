"""A warm start's previous run: its data (for replay) and this run's retrieval on its valid queries (forgetting)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfrec.baselines.search import MiniLMBaseline
from tfrec.data.datasets import load_data
from tfrec.data.slices import slice_for_config
from tfrec.data.tables import Judgments, SearchData
from tfrec.evaluation import search as ev
from tfrec.retrieval.train import encode_queries
from tfrec.search.hybrid import CatalogScorer, HybridWeights
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.views import retrieval_view
from tfrec.training.warm_start import PreviousRun, forgetting, read_previous_run

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Previous:
    """The run a warm start continues from, and its data as that run sliced it."""

    run: PreviousRun
    data: SearchData


def load_previous(run_dir: Path) -> Previous:
    """Read a previous search run (clear errors for what is missing) and load its data slice."""
    run = read_previous_run(Path(run_dir))
    return Previous(run, slice_for_config(load_data(run.loaded), run.loaded.config))


def previous_valid(ctx: SearchContext, previous: Previous, towers: Any, zero_shot: MiniLMBaseline, scorer: CatalogScorer,
                   weights: HybridWeights) -> dict:
    """Retrieval metrics of this run's models on the previous run's valid queries, and the change since then."""
    cfg, data, old = ctx.cfg, ctx.data, previous.data
    rows = data.catalog.index_of(old.catalog.ids[old.valid.products])
    present = rows >= 0
    valid = Judgments(old.valid.queries[present], rows[present].astype(np.int32), old.valid.labels[present], old.valid.source)
    seen = ev.seen_products(data.train, len(data.catalog))
    es = ev.SearchEvalSet.from_judgments(valid, cfg.evaluation.positive_relevance, seen)
    queries = list(es.queries)
    k_max = max(max(cfg.evaluation.ks), cfg.retrieval.top_k)
    top, _ = scorer.top_k(encode_queries(towers, queries), zero_shot.encode(queries), es.queries, weights, k_max)
    after = retrieval_view(ev.retrieval_report(es, top, cfg.evaluation.ks))
    before = previous.run.metrics.get("systems", {}).get("tfrec_hybrid", {}).get("retrieval")
    keys = [k for k in after if k.startswith("recall@") or k == "mrr"]
    result = {"n_queries": int(es.n_queries), "dropped_judgments": int((~present).sum()), "after": after,
              "before": {k: before[k] for k in keys if before and k in before}, "change": forgetting(before, after, keys)}
    log.info("previous valid (%d queries): recall@100 %s -> %s" % (
        result["n_queries"], result["before"].get("recall@100"), result["after"].get("recall@100")))
    return result
