"""A search run's final top results per valid query (``top_results.json``), and picking its worst queries.

The file lets ``tfrec evaluate`` show what a system returned for the queries it fails on without
rebuilding any model: each query's top K ids with their judged labels, and the query's judged
products, titles included.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tfrec.evaluation.search import SearchEvalSet
from tfrec.runs import RunFolder, write_json

TOP_RESULTS_FILE = RunFolder(Path()).top_results.name  # the file's name, for callers that write it by name
FORMAT = "tfrec.top_results/1"


def top_results_record(es: SearchEvalSet, top: np.ndarray, product_ids: Sequence[str], titles: Sequence[str], system: str,
                       k: int = 10) -> dict[str, Any]:
    """The first ``k`` catalog rows of ``top`` (one row per query of ``es``) with labels and titles, as JSON-ready data."""
    top = np.asarray(top)
    if top.ndim != 2 or top.shape[0] != es.n_queries:
        raise ValueError("top must be [%d queries, K], got %s" % (es.n_queries, top.shape))
    product_ids, titles = np.asarray(product_ids).astype(str), np.asarray(titles).astype(str)
    queries, used = [], set()
    for q in range(es.n_queries):
        judged_rows = es.products[es.offsets[q]:es.offsets[q + 1]]
        judged_labels = es.labels[es.offsets[q]:es.offsets[q + 1]]
        rows = [int(r) for r in top[q, :k] if r >= 0]
        used.update(rows)
        used.update(int(r) for r in judged_rows)
        queries.append({
            "query": str(es.queries[q]),
            "top": [product_ids[r] for r in rows],
            "judged": [[product_ids[int(r)], round(float(label), 3)] for r, label in zip(judged_rows, judged_labels)],
        })
    rows = sorted(used)
    return {"format": FORMAT, "system": system, "k": int(k), "positive_relevance": float(es.positive_relevance),
            "products": {product_ids[r]: titles[r] for r in rows}, "queries": queries}


def write_top_results(path: Path, record: dict[str, Any]) -> Path:
    """Save a :func:`top_results_record` as one line of JSON (atomically: it can be large)."""
    return write_json(Path(path), record, compact=True)


def read_top_results(path: Path) -> dict[str, Any]:
    """Read ``top_results.json``; a clear error if it is not one."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError("%s is not valid JSON: %s" % (path, err)) from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("%s is not a tfrec top-results file (format %r expected)" % (path, FORMAT))
    return record


@dataclass(frozen=True)
class FailedQuery:
    """One query a system does badly on: its metric value, what it returned and what it missed."""

    query: str
    value: float
    n_judged: int
    n_positive: int
    top: tuple[tuple[str, str, Optional[float]], ...]  # (id, title, judged label or None)
    missed: tuple[tuple[str, str, float], ...]  # the best judged products not in the top K


def worst_queries(record: dict[str, Any], keys: Sequence[str], values: Sequence[float], n: int = 8,
                  show: int = 5) -> list[FailedQuery]:
    """The ``n`` queries with the lowest ``values`` (ties: the most positives first), with their top results.

    ``keys``/``values`` are a per-query metric (``per_query.npz``); queries missing from the record
    or with an undefined value (NaN) are skipped.
    """
    by_query = {entry["query"]: entry for entry in record["queries"]}
    titles = record["products"]
    positive = float(record.get("positive_relevance", 2.5))
    candidates = []
    for key, value in zip(keys, values):
        entry = by_query.get(str(key))
        if entry is None or not np.isfinite(value):
            continue
        n_positive = sum(1 for _, label in entry["judged"] if label >= positive)
        candidates.append((float(value), -n_positive, str(key), entry, n_positive))
    candidates.sort(key=lambda c: c[:3])
    out = []
    for value, _, query, entry, n_positive in candidates[:n]:
        labels = {pid: label for pid, label in entry["judged"]}
        top = tuple((pid, titles.get(pid, ""), labels.get(pid)) for pid in entry["top"][:show])
        returned = set(entry["top"])
        missed = sorted(((pid, titles.get(pid, ""), label) for pid, label in entry["judged"] if pid not in returned),
                        key=lambda item: -item[2])[:3]
        out.append(FailedQuery(query, value, len(entry["judged"]), n_positive, top, tuple(missed)))
    return out
