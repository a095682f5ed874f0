"""The search run's evaluation on valid as typed results; ``SearchMetrics.to_json()`` is metrics.json.

Views: retrieval recall/MRR over the whole catalog, end-to-end NDCG@10 (top-k retrieved then
ranked), re-rank NDCG of the judged products, each with seen/cold splits; paired bootstrap of
tfrec against the strongest baseline of each view; the tuning and untouched halves.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from tfrec.evaluation import search as ev
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.cross_encoder import CrossEncoderResult
from tfrec.search.stages.hybrid import HybridChoice, ValidRetrieval
from tfrec.search.stages.queries import QuerySplits, subset_eval_set
from tfrec.search.stages.ranker import RankedValid, Ranker
from tfrec.search.stages.towers import Towers
from tfrec.search.stages.views import e2e_view, retrieval_view

BASELINE_LABELS = {
    "bm25": "BM25 (bm25s)", "bm25_stemmed": "Stemmed BM25 (bm25s + PyStemmer)",
    "minilm_zero_shot": "Zero-shot MiniLM cosine", "hybrid_bm25_minilm": "Hybrid: z(stemmed BM25) + z(MiniLM)",
    "bm25_rerank_minilm": "Stemmed BM25 top-100 re-ranked by MiniLM",
}


@dataclass(frozen=True)
class SystemMetrics:
    """One system's views on valid (None: the view does not apply to it)."""

    label: str
    kind: str  # tfrec, baseline or reference
    retrieval: Optional[dict]
    e2e: Optional[dict]
    rerank: Optional[dict]

    def view(self, name: str) -> Optional[dict]:
        """The retrieval, e2e or rerank view."""
        return getattr(self, name)

    def to_json(self) -> dict:
        """metrics.json's ``systems.<name>``."""
        return _jsonable({"label": self.label, "kind": self.kind, "retrieval": self.retrieval, "e2e": self.e2e, "rerank": self.rerank})


@dataclass(frozen=True)
class Significance:
    """Paired bootstrap of a tfrec system against the strongest baseline on one view."""

    view: str
    system: str
    versus: str
    metric: str
    result: dict  # ev.paired_bootstrap's fields
    n_queries: int

    def to_json(self) -> dict:
        """One entry of metrics.json's ``significance``."""
        return _jsonable({"view": self.view, "system": self.system, "versus": self.versus, "metric": self.metric,
                          **self.result, "n_queries": self.n_queries})


@dataclass(frozen=True)
class Half:
    """End-to-end NDCG@10 and hybrid recall@100 on one half of valid (NaN when the half is empty)."""

    e2e_ndcg_10: float
    recall_100: float
    n_queries: int

    def to_json(self) -> dict:
        """metrics.json's ``halves.<tune|holdout>``."""
        return _jsonable({"e2e_ndcg@10": self.e2e_ndcg_10, "recall@100": self.recall_100, "n_queries": self.n_queries})


@dataclass(frozen=True)
class SearchMetrics:
    """Everything metrics.json holds about a search run."""

    dataset: str
    split: str
    run_name: str
    created: str
    n_queries: dict
    catalog_size: int
    systems: dict[str, SystemMetrics]
    significance: list[Significance]
    timings: dict[str, float]
    training: dict
    hybrid_weight_trials: list[dict]
    halves: dict[str, Half]
    notes: list[str]
    continual: Optional[dict] = None  # warm starts only

    def to_json(self) -> dict:
        """The metrics.json content (keys in their published order, floats rounded, NaN as null)."""
        out = {
            "dataset": self.dataset, "split": self.split, "run_name": self.run_name, "created": self.created,
            "n_queries": self.n_queries, "catalog_size": self.catalog_size,
            "systems": {name: system.to_json() for name, system in self.systems.items()},
            "significance": [s.to_json() for s in self.significance],
            "timings": self.timings,
            "training": self.training,
            "hybrid_weight_trials": self.hybrid_weight_trials,
            "halves": {name: half.to_json() for name, half in self.halves.items()},
            "notes": self.notes,
        }
        if self.continual is not None:
            out["continual"] = self.continual
        return _jsonable(out)


@dataclass(frozen=True, eq=False)
class SearchEvaluation:
    """The metrics and the per-query arrays `tfrec compare` pairs ({system: {metric: [Q]}})."""

    metrics: SearchMetrics
    per_query: dict[str, dict[str, np.ndarray]]


def evaluate_search(ctx: SearchContext, queries: QuerySplits, baselines: Optional[dict], towers: Towers, hybrid: HybridChoice,
                    retrieval: ValidRetrieval, ranker: Ranker, ranked: RankedValid, cross: Optional[CrossEncoderResult],
                    previous_valid: Optional[dict]) -> SearchEvaluation:
    """Every system's views on valid, tfrec against the strongest baselines, halves; the training records of the run."""
    cfg, es = ctx.cfg, queries.valid
    ks = sorted(cfg.evaluation.ks)
    systems: dict[str, SystemMetrics] = {}
    per_query: dict[str, dict[str, np.ndarray]] = {}
    if baselines:
        for name, label in BASELINE_LABELS.items():
            if name in baselines:
                systems[name] = _system_from_baseline(label, baselines[name])
                per_query[name] = baselines["per_query"].get(name, {})
        for name, label in (("random", "Random order"), ("perfect", "Perfect order")):
            systems[name] = SystemMetrics(label, "reference", None, None, {"ndcg@10": baselines[name]["ndcg@10_rerank"]})
    dense_only, valid_top, final_top = retrieval.dense_only, retrieval.top, ranked.top
    dense_report = ev.retrieval_report(es, dense_only, ks)
    systems["tfrec_two_tower"] = _system("tfrec two-tower (fine-tuned MiniLM + id)", dense_report)
    hybrid_report = ev.retrieval_report(es, valid_top, ks)
    systems["tfrec_hybrid"] = _system("tfrec hybrid retrieval (dense + in-graph BM25 + zero-shot)", hybrid_report)
    final_report = ev.retrieval_report(es, final_top, [k for k in ks if k <= final_top.shape[1]] or [final_top.shape[1]])
    rerank_mean, rerank_values = ev.rerank_ndcg(es, ranked.judged_scores, 10)
    rerank5, _ = ev.rerank_ndcg(es, ranked.judged_scores, 5)
    rerank = {"ndcg@5": rerank5, "ndcg@10": rerank_mean, **_split(es, rerank_values, "ndcg@10")}
    # A ranker that did not beat retrieval on the tuning half is not served: the search is then retrieval order
    # (its re-rank view still scores the judged products, as the exported ranker does for clients' own lists).
    label = ("tfrec search: hybrid top-%d + ranker" if ranker.kept else "tfrec search: hybrid top-%d (ranker not kept)")
    systems["tfrec_search"] = SystemMetrics(label % cfg.retrieval.top_k, "tfrec", None, e2e_view(final_report), rerank)
    per_query["tfrec_search"] = {"ndcg@10_e2e": ev.end_to_end_ndcg(es, final_top, 10)[1], "ndcg@10_rerank": rerank_values}
    if cross is not None:
        c_mean, c_values = ev.rerank_ndcg(es, cross.judged_scores, 10)
        c_report = ev.retrieval_report(es, cross.top, [10])
        systems["tfrec_cross_encoder"] = SystemMetrics(
            "tfrec hybrid top-%d + cross-encoder" % cfg.retrieval.top_k, "tfrec", None,
            e2e_view(c_report), {"ndcg@10": c_mean, **_split(es, c_values, "ndcg@10")},
        )
        per_query["tfrec_cross_encoder"] = {"ndcg@10_e2e": ev.end_to_end_ndcg(es, cross.top, 10)[1], "ndcg@10_rerank": c_values}

    for name, top in (("tfrec_two_tower", dense_only), ("tfrec_hybrid", valid_top)):
        per_query[name] = {"recall@%d" % k: v for k, v in ev.recall_at_k_per_query(es, top, [k for k in ks if k <= top.shape[1]]).items()}
    significance = _significance(systems, per_query, cfg.evaluation.bootstrap_resamples, cfg.run.seed)
    halves = _halves(queries, valid_top, final_top)
    weights = hybrid.weights.as_dict()
    ranker_info = ranker.info
    notes = [
        "Valid split (%d queries); nothing here trained on it. The hybrid weights %s were chosen on a seeded "
        "tuning half of valid (%d queries, by recall@%d over the catalog); the other half (%d queries) is "
        "untouched: end-to-end NDCG@10 there %.4f (tuning half %.4f), recall@100 there %.4f (tuning half %.4f)."
        % (es.n_queries, "(%s)" % ", ".join("%s %g" % item for item in weights.items()), int(queries.tune.sum()), cfg.retrieval.top_k, int(queries.holdout.sum()),
           halves["holdout"].e2e_ndcg_10, halves["tune"].e2e_ndcg_10, halves["holdout"].recall_100, halves["tune"].recall_100),
        "Products that no training judgment names (cold) are scored through their text alone: their id embedding "
        "is exactly zero.",
        "The ranker trained on %d held-out training queries (not used by the two towers). Its loss (%s) and the "
        "weight of the catalog-z-scored two-tower score added to its score (%g) were chosen on the same tuning half."
        % (ranker_info["lists"], ranker_info["loss"], ranker_info["dense_fusion"]["weight"]),
    ]
    retrieval_info = {**towers.info, "index": retrieval.index_info}
    metrics = SearchMetrics(
        dataset=ctx.data.name, split="valid", run_name=cfg.run.name, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        n_queries={"rerank": es.n_queries, "retrieval": hybrid_report["n_queries"], "e2e": es.n_queries},
        catalog_size=len(ctx.data.catalog),
        systems=systems, significance=significance,
        timings=dict(ctx.timer.seconds),
        training={
            "retrieval": {**retrieval_info, "hybrid_weights": weights},
            "ranker": ranker_info,
            **({"cross_encoder": cross.info} if cross else {}),
        },
        hybrid_weight_trials=hybrid.trials,
        halves=halves,
        notes=notes,
        continual=(None if previous_valid is None
                   else {"warm_start": retrieval_info.get("warm_start"), "previous_valid": previous_valid}),
    )
    return SearchEvaluation(metrics, per_query)


def _halves(queries: QuerySplits, valid_top: np.ndarray, final_top: np.ndarray) -> dict[str, Half]:
    out = {}
    for name, mask in (("tune", queries.tune), ("holdout", queries.holdout)):
        if not mask.any():
            out[name] = Half(float("nan"), float("nan"), 0)
            continue
        es = subset_eval_set(queries.valid, mask)
        k = min(100, valid_top.shape[1])
        out[name] = Half(ev.end_to_end_ndcg(es, final_top[mask], 10)[0], ev.recall_at_k(es, valid_top[mask], [k])[k], int(mask.sum()))
    return out


def headline_recall(metrics: dict) -> Optional[str]:
    """The retrieval view's headline metric among a system's retrieval metrics: recall@100, else its deepest recall@K."""
    cutoffs = sorted(int(name.split("@")[1]) for name in metrics if name.startswith("recall@"))
    if not cutoffs:
        return None
    return "recall@100" if 100 in cutoffs else "recall@%d" % cutoffs[-1]


def _significance(systems: dict[str, SystemMetrics], per_query: dict, resamples: int, seed: int) -> list[Significance]:
    """Paired bootstrap of each tfrec system against the strongest baseline of its view, on the view's headline metric."""
    eligible = tuple(BASELINE_LABELS)
    hybrid = systems.get("tfrec_hybrid")
    recall = headline_recall(hybrid.retrieval or {}) if hybrid is not None else None
    plans = [("e2e", "ndcg@10", "ndcg@10_e2e", ("tfrec_search", "tfrec_cross_encoder")),
             ("retrieval", recall, recall, ("tfrec_hybrid",)),
             ("rerank", "ndcg@10", "ndcg@10_rerank", ("tfrec_search", "tfrec_cross_encoder"))]
    out = []
    for view, metric, key, candidates in plans:
        best = _best_baseline(systems, view, metric, eligible) if metric else None
        if best is None:
            continue
        for system in candidates:
            # a baseline saved without per-query values for this metric has no paired test
            if system in per_query and key in per_query[system] and key in per_query.get(best, {}):
                result = ev.paired_bootstrap(per_query[system][key], per_query[best][key], resamples, seed)
                out.append(Significance(view, system, best, metric, result, int(result["n_queries"])))
    return out


def _system(label: str, report: dict) -> SystemMetrics:
    return SystemMetrics(label, "tfrec", retrieval_view(report), e2e_view(report), None)


def _system_from_baseline(label: str, report: dict) -> SystemMetrics:
    rerank = None
    if "ndcg@10_rerank" in report:
        rerank = {"ndcg@10": report["ndcg@10_rerank"]}
        for group in ("seen", "cold"):
            if group in report and "ndcg@10_rerank" in report[group]:
                rerank[group] = {"ndcg@10": report[group]["ndcg@10_rerank"]}
    return SystemMetrics(label, "baseline", retrieval_view(report), e2e_view(report), rerank)


def _split(es: ev.SearchEvalSet, values: np.ndarray, key: str) -> dict:
    groups = ev.split_by_seen(es, values)
    return {g: {key: groups[g]["mean"], "n_queries": groups[g]["n_queries"]} for g in ("seen", "cold")}


def _best_baseline(systems: dict[str, SystemMetrics], view: str, metric: str, eligible: tuple) -> Optional[str]:
    scored = [(systems[n].view(view)[metric], n) for n in eligible
              if n in systems and systems[n].view(view) and metric in systems[n].view(view)]
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
