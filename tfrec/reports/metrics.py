"""Validate the metrics dict a search run writes (metrics.json) into typed records for the reports.

Keys the reports do not show are ignored, so the metrics.json of older tfrec versions still renders.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Mapping

VIEWS = ("e2e", "retrieval", "rerank")
GROUPS = ("seen", "cold")
REQUIRED_KEYS = ("dataset", "split", "systems")
DEFAULT_POSITIVE_RELEVANCE = 2.5

_FAMILY_ORDER = {"ndcg": 0, "recall": 1, "precision": 2, "hit_rate": 3, "mrr": 4, "map": 5}
_METRIC_NAMES = {"ndcg": "NDCG", "recall": "Recall", "precision": "Precision", "mrr": "MRR", "map": "MAP", "hit_rate": "HitRate"}


@dataclass(frozen=True)
class SystemResult:
    """One system's headline metrics per view and its seen/cold group metrics."""

    key: str
    label: str
    kind: str
    views: dict[str, dict[str, float | None]]  # view -> metric -> value; a null view is absent
    groups: dict[str, dict[str, dict[str, float | None]]]  # view -> "seen"/"cold" -> metric -> value

    def value(self, view: str, metric: str) -> float | None:
        """The headline value of ``metric`` in ``view``, or None when not reported."""
        return self.views.get(view, {}).get(metric)


@dataclass(frozen=True)
class Comparison:
    """One paired significance test between two systems on one metric."""

    view: str
    system: str
    versus: str
    metric: str
    mean_diff: float | None
    low: float | None
    high: float | None
    p_value: float | None
    n_queries: float | None
    confidence: float | None


@dataclass(frozen=True)
class Export:
    """An exported model: where it went and how large it is."""

    name: str
    path: str
    mb: float | None


@dataclass(frozen=True)
class SearchMetrics:
    """Everything the search report shows, validated."""

    dataset: str
    split: str
    run_name: str
    created: str
    n_queries: dict[str, float | None]
    catalog_size: float | None
    positive_relevance: float
    systems: tuple[SystemResult, ...]
    significance: tuple[Comparison, ...]
    timings: dict[str, float]
    training: dict[str, dict[str, Any]]
    exports: tuple[Export, ...]
    notes: tuple[str, ...]

    def label(self, key: str) -> str:
        """The display label of a system key (the key itself when the system is unknown)."""
        for system in self.systems:
            if system.key == key:
                return system.label
        return key


def metric_sort_key(name: str) -> tuple[int, int]:
    """Order metrics by family (NDCG, Recall, ..., MRR, MAP, others) and then by cut-off."""
    match = re.fullmatch(r"([a-z_]+)@(\d+)", name.lower())
    family, k = (match.group(1), int(match.group(2))) if match else (name.lower(), 0)
    return _FAMILY_ORDER.get(family, len(_FAMILY_ORDER)), k


def metric_label(name: str) -> str:
    """Display name of a metric key: ``recall@10`` -> ``Recall@10``, ``mrr`` -> ``MRR``."""
    family, _, k = name.partition("@")
    shown = _METRIC_NAMES.get(family.lower(), family)
    return "%s@%s" % (shown, k) if k else shown


def recall_cutoff(name: str) -> int | None:
    """K of a ``recall@K`` key, None for any other metric."""
    match = re.fullmatch(r"recall@(\d+)", name.lower())
    return int(match.group(1)) if match else None


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    # numbers.Real also admits numpy scalars, which a pipeline may pass before any JSON round trip
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError("%s must be a number or null, got %r" % (where, value))
    value = float(value)
    return value if math.isfinite(value) else None  # NaN/inf (empty group, failed evaluation): not reported


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("%s must be a dict, got %r" % (where, value))
    return value


def _require(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise ValueError("%s is missing required key %r" % (where, key))
    return entry[key]


def _metric_values(raw: Mapping[str, Any], where: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, value in raw.items():
        if name in GROUPS or isinstance(value, Mapping):
            continue  # groups are read separately; other nested parts are free-form extras
        out[str(name)] = _number(value, "%s[%r]" % (where, name))
    return out


def _system(key: str, raw: Any) -> SystemResult:
    where = "metrics['systems'][%r]" % key
    raw = _mapping(raw, where)
    views: dict[str, dict[str, float | None]] = {}
    groups: dict[str, dict[str, dict[str, float | None]]] = {}
    for view in VIEWS:
        part = raw.get(view)
        if part is None:
            continue
        part = _mapping(part, "%s[%r]" % (where, view))
        views[view] = _metric_values(part, "%s[%r]" % (where, view))
        found = {}
        for group in GROUPS:
            if part.get(group) is not None:
                gwhere = "%s[%r][%r]" % (where, view, group)
                found[group] = _metric_values(_mapping(part[group], gwhere), gwhere)
        if found:
            groups[view] = found
    return SystemResult(key=key, label=str(raw.get("label") or key), kind=str(raw.get("kind") or ""), views=views, groups=groups)


def _entries(metrics: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    raw = metrics.get(key)
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise ValueError("metrics[%r] must be a list, got %r" % (key, raw))
    return [_mapping(entry, "%s[%d]" % (key, i)) for i, entry in enumerate(raw)]


def _comparisons(metrics: Mapping[str, Any]) -> tuple[Comparison, ...]:
    out = []
    for i, entry in enumerate(_entries(metrics, "significance")):
        where = "significance[%d]" % i
        num = {name: _number(entry.get(name), "%s[%r]" % (where, name)) for name in ("mean_diff", "low", "high", "p_value", "n_queries", "confidence")}
        out.append(Comparison(
            view=str(entry.get("view") or ""),
            system=str(_require(entry, "system", where)),
            versus=str(_require(entry, "versus", where)),
            metric=str(_require(entry, "metric", where)),
            **num,
        ))
    return tuple(out)


def _timings(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for step, seconds in _mapping(metrics.get("timings") or {}, "metrics['timings']").items():
        value = _number(seconds, "metrics['timings'][%r]" % step)
        if value is None or value < 0:
            raise ValueError("metrics['timings'][%r] must be a non-negative number of seconds, got %r" % (step, seconds))
        out[str(step)] = value
    return out


def _training(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    sections = _mapping(metrics.get("training") or {}, "metrics['training']")
    return {str(name): dict(_mapping(part, "metrics['training'][%r]" % name)) for name, part in sections.items() if part is not None}


def _exports(metrics: Mapping[str, Any]) -> tuple[Export, ...]:
    out = []
    for name, raw in _mapping(metrics.get("exports") or {}, "metrics['exports']").items():
        where = "metrics['exports'][%r]" % name
        entry = _mapping(raw, where)
        out.append(Export(name=str(name), path=str(entry.get("path") or ""), mb=_number(entry.get("mb"), "%s['mb']" % where)))
    return tuple(out)


def _notes(metrics: Mapping[str, Any]) -> tuple[str, ...]:
    raw = metrics.get("notes")
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if not isinstance(raw, (list, tuple)):
        raise ValueError("metrics['notes'] must be a list of strings, got %r" % (raw,))
    return tuple(str(note) for note in raw)


def _counts(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    raw = _mapping(metrics.get("n_queries") or {}, "metrics['n_queries']")
    return {str(view): _number(n, "metrics['n_queries'][%r]" % view) for view, n in raw.items()}


def parse_metrics(metrics: Mapping[str, Any]) -> SearchMetrics:
    """Check the required keys and the types of the optional parts; raise ValueError naming what is wrong."""
    metrics = _mapping(metrics, "metrics")
    for key in REQUIRED_KEYS:
        _require(metrics, key, "metrics")
    systems = metrics["systems"]
    if not isinstance(systems, Mapping) or not systems:
        raise ValueError("metrics['systems'] must be a non-empty dict of systems, got %r" % (systems,))
    positive = _number(metrics.get("positive_relevance"), "metrics['positive_relevance']")
    return SearchMetrics(
        dataset=str(metrics["dataset"]),
        split=str(metrics["split"]),
        run_name=str(metrics.get("run_name") or ""),
        created=str(metrics.get("created") or ""),
        n_queries=_counts(metrics),
        catalog_size=_number(metrics.get("catalog_size"), "metrics['catalog_size']"),
        positive_relevance=DEFAULT_POSITIVE_RELEVANCE if positive is None else positive,
        systems=tuple(_system(str(key), raw) for key, raw in systems.items()),
        significance=_comparisons(metrics),
        timings=_timings(metrics),
        training=_training(metrics),
        exports=_exports(metrics),
        notes=_notes(metrics),
    )
