"""Statistics of a loaded dataset: what `tfrec data validate` prints and every run saves."""
from __future__ import annotations

from typing import Any

import numpy as np

from tfrec.config.schema import Config
from tfrec.data.errors import format_drops
from tfrec.data.pipelines import build_ranking_lists
from tfrec.data.tables import Catalog, Judgments, RecommendationData, SearchData, Sequences


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": 0.0, "median": 0.0, "max": 0.0}
    return {"mean": round(float(np.mean(values)), 2), "median": round(float(np.median(values)), 2), "max": round(float(np.max(values)), 2)}


def _catalog_stats(catalog: Catalog) -> dict[str, Any]:
    out: dict[str, Any] = {"items": len(catalog), "source": catalog.source}
    for name, texts in catalog.texts.items():
        words = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
        out["%s_words" % name] = _summary(words)
        out["%s_empty" % name] = int((words == 0).sum())
    distinct = len(set(catalog.text().tolist()))
    out["items_sharing_their_text"] = len(catalog) - distinct
    for name, values in catalog.numeric.items():
        out["numeric_%s_missing" % name] = int(np.isnan(values).sum())
    for name, values in catalog.categorical.items():
        out["categorical_%s_values" % name] = len(set(values.tolist()) - {""})
        out["categorical_%s_missing" % name] = int((values == "").sum())
    return out


def _judgment_stats(judgments: Judgments, positive_relevance: float, min_relevance: float) -> dict[str, Any]:
    queries, per_query = np.unique(judgments.queries.astype(str), return_counts=True) if len(judgments) else ([], np.zeros(0))
    return {
        "judgments": len(judgments),
        "queries": len(queries),
        "judgments_per_query": _summary(per_query),
        "label": _summary(judgments.labels),
        "retrieval_pairs": int((judgments.labels >= min_relevance).sum()),
        "positives": int((judgments.labels >= positive_relevance).sum()),
        "source": judgments.source,
    }


def _normalize(query: str) -> str:
    return " ".join(query.lower().split())


def search_stats(data: SearchData, config: Config) -> dict[str, Any]:
    """Catalog, per-split judgment statistics and the train/valid overlap that leakage checks need."""
    ev, rt = config.evaluation, config.retrieval
    lists = build_ranking_lists(data.train, config.ranking.list_size, config.run.seed)
    seen = np.zeros(len(data.catalog), dtype=bool)
    seen[data.train.products] = True
    train_queries = {_normalize(q) for q in data.train.queries.tolist()}
    valid_queries = {_normalize(q) for q in data.valid.queries.tolist()}
    return {
        "dataset": data.name,
        "catalog": _catalog_stats(data.catalog),
        "train": _judgment_stats(data.train, ev.positive_relevance, rt.min_relevance),
        "valid": _judgment_stats(data.valid, ev.positive_relevance, rt.min_relevance),
        "ranking_lists": {
            "list_size": config.ranking.list_size,
            "train_lists": len(lists.queries),
            "truncated_lists": lists.truncated_lists,
            "judgments_cut_by_truncation": lists.dropped_items,
        },
        "overlap": {
            # Products judged only for valid queries are cold: they must go the text path.
            "catalog_items_seen_in_train": int(seen.sum()),
            "valid_judgments_on_items_seen_in_train": int(seen[data.valid.products].sum()),
            "valid_judgments_on_cold_items": int((~seen[data.valid.products]).sum()),
            "valid_queries_also_in_train_after_normalizing": len(train_queries & valid_queries),
        },
        "dropped_rows": data.drops.as_dict(),
    }


def _sequence_stats(sequences: Sequences, max_history: int) -> dict[str, Any]:
    lengths = sequences.history_lengths()
    return {
        "examples": len(sequences),
        "users": len(set(sequences.users.tolist())),
        "history_length": _summary(lengths),
        "histories_cut_to_max_history": int((lengths > max_history).sum()),
        "source": sequences.source,
    }


def recommendation_stats(data: RecommendationData, config: Config) -> dict[str, Any]:
    """Catalog, per-split sequence statistics and how many valid targets are cold items."""
    max_history = config.recommendation.max_history
    seen = np.zeros(len(data.catalog), dtype=bool)
    seen[data.train.targets] = True
    # Positions of the flat item array covered by any train history (difference array, no loop).
    cover = np.zeros(len(data.train.items) + 1, dtype=np.int64)
    np.add.at(cover, data.train.starts, 1)
    np.add.at(cover, data.train.ends, -1)
    seen[data.train.items[np.cumsum(cover)[:-1] > 0]] = True
    out = {
        "dataset": data.name,
        "catalog": _catalog_stats(data.catalog),
        "train": _sequence_stats(data.train, max_history),
        "valid": _sequence_stats(data.valid, max_history),
        "overlap": {
            "catalog_items_seen_in_train": int(seen.sum()),
            "valid_targets_never_seen_in_train": int((~seen[data.valid.targets]).sum()),
        },
        "dropped_rows": data.drops.as_dict(),
    }
    if data.interactions is not None:
        out["interactions"] = {"events": len(data.interactions), "users": len(set(data.interactions.users.tolist())), "source": data.interactions.source}
    return out


def dataset_stats(data: SearchData | RecommendationData, config: Config) -> dict[str, Any]:
    """Statistics of either kind of dataset."""
    if isinstance(data, SearchData):
        return search_stats(data, config)
    return recommendation_stats(data, config)


def format_stats(stats: dict[str, Any], indent: int = 0) -> list[str]:
    """Render nested statistics as indented ``key: value`` lines for the terminal."""
    lines = []
    pad = "  " * indent
    for key, value in stats.items():
        if key == "dropped_rows" and isinstance(value, dict) and "reasons" in value:
            # A table by file and reason, not the statistics file's nested lists.
            lines.append("%s%s: %s" % (pad, key, value["total"] or "none"))
            lines.extend("%s  %s" % (pad, line) for line in format_drops(value))
        elif isinstance(value, dict) and not set(value) <= {"mean", "median", "max"}:
            lines.append("%s%s:" % (pad, key))
            lines.extend(format_stats(value, indent + 1))
        elif isinstance(value, dict):
            lines.append("%s%s: mean %s, median %s, max %s" % (pad, key, value["mean"], value["median"], value["max"]))
        elif isinstance(value, list):
            lines.append("%s%s: %s" % (pad, key, "none" if not value else ""))
            for entry in value:
                lines.append("%s  - %s" % (pad, entry))
        else:
            lines.append("%s%s: %s" % (pad, key, value))
    return lines
