"""The files a search run leaves beside its model weights: metrics, serving settings, catalog vectors, per-query results."""
from __future__ import annotations

import numpy as np

from tfrec.evaluation.compare import write_per_query
from tfrec.evaluation.results import top_results_record, write_top_results
from tfrec.runs import write_json
from tfrec.search.hybrid import HybridWeights
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.evaluation import SearchEvaluation
from tfrec.search.stages.queries import QuerySplits


def save_search_run(ctx: SearchContext, evaluation: SearchEvaluation, weights: HybridWeights, catalog_dense: np.ndarray,
                    queries: QuerySplits, final_top: np.ndarray, rerank: bool = True) -> None:
    """Write metrics.json, search_config.json (``rerank``: whether the ranker was kept), the catalog vectors, per_query.npz and top_results.json."""
    run = ctx.run
    write_json(run.metrics, evaluation.metrics.to_json())
    write_json(run.search_settings, {"hybrid_weights": weights.as_dict(), "top_k": ctx.cfg.retrieval.top_k, "rerank": bool(rerank)})
    np.save(run.catalog_vectors, catalog_dense)
    write_per_query(run.per_query, queries.valid.queries, evaluation.per_query)
    write_top_results(run.top_results, top_results_record(
        queries.valid, final_top, ctx.data.catalog.ids, ctx.titles, system="tfrec_search"))
