"""Zero-shot MiniLM vectors (a hybrid signal and a baseline) and the baselines on valid (bm25s, MiniLM, hybrid)."""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from tfrec.baselines.search import MiniLMBaseline, evaluate_search_baselines
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.queries import QuerySplits
from tfrec.text.catalog import frozen_encoder, prepared_catalog_vectors


@dataclass(frozen=True, eq=False)
class ZeroShot:
    """Frozen MiniLM vectors of the catalog, the valid queries and the ranker's training queries."""

    model: MiniLMBaseline
    catalog: np.ndarray
    valid: np.ndarray
    ranker: np.ndarray


def zero_shot_vectors(ctx: SearchContext, queries: QuerySplits) -> ZeroShot:
    """Encode the catalog (cached) and the valid and ranker queries with the frozen MiniLM."""
    model = MiniLMBaseline(list(ctx.titles), ctx.cfg.text, progress=True, encoder=frozen_encoder(ctx.cfg.text),
                           catalog_vectors=prepared_catalog_vectors(ctx.cfg))
    return ZeroShot(model, model.catalog_vectors, model.encode(list(queries.valid.queries)), model.encode(list(queries.ranker.queries)))


def search_baselines(ctx: SearchContext, zero: ZeroShot) -> dict:
    """Every baseline's report on valid, with per-query arrays (see ``evaluate_search_baselines``)."""
    cfg, data = ctx.cfg, ctx.data
    return evaluate_search_baselines(
        list(ctx.titles), data.train, data.valid, cfg.text, ks=cfg.evaluation.ks,
        positive_relevance=cfg.evaluation.positive_relevance, progress=True, minilm=zero.model,
    )
