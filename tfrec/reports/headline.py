"""The headline of a report: tfrec against the strongest baseline on each view, with the paired interval and a verdict.

The interval is the paired bootstrap a run saves in metrics.json's ``significance``; the verdict
only says "better" or "worse" when that interval excludes 0.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from tfrec.reports.metrics import SearchMetrics, metric_label
from tfrec.reports.tables import MISSING, Cell, Table, fmt3, fmt_count, fmt_signed

BETTER, WORSE, SAME = "better", "worse", "no measurable difference"
VIEW_HEADINGS = {"e2e": "End-to-end", "retrieval": "Retrieval", "rerank": "Re-rank"}
# Each search view's tfrec system and headline metric (None: the retrieval view's recall@K, see headline_recall).
SEARCH_VIEWS = (("e2e", "tfrec_search", "ndcg@10"), ("retrieval", "tfrec_hybrid", None), ("rerank", "tfrec_search", "ndcg@10"))
RECOMMENDATION_METRICS = ("recall@10", "ndcg@10")


@dataclass(frozen=True)
class Versus:
    """tfrec against the strongest baseline on one view and metric."""

    view: str  # what is compared, e.g. "End-to-end NDCG@10"
    system: str  # the tfrec system's label
    value: Optional[float]
    baseline: str  # the strongest baseline's label
    baseline_value: Optional[float]
    diff: Optional[float]  # tfrec minus baseline: the paired mean when tested, else the difference of the means
    low: Optional[float] = None
    high: Optional[float] = None
    n: Optional[float] = None  # queries (or users) the interval pairs

    @property
    def verdict(self) -> str:
        """"better" or "worse" when the interval excludes 0, else "no measurable difference"; "-" without an interval."""
        return verdict(self.low, self.high)

    def interval(self) -> str:
        """The 95% interval as text, or "-" when the run saved none."""
        return MISSING if self.low is None or self.high is None else "[%s, %s]" % (fmt_signed(self.low), fmt_signed(self.high))


def verdict(low: Optional[float], high: Optional[float]) -> str:
    """"better" if the interval of (tfrec - baseline) is above 0, "worse" if below, else "no measurable difference"."""
    if low is None or high is None:
        return MISSING
    return BETTER if low > 0 else WORSE if high < 0 else SAME


def headline_recall(names: Sequence[str]) -> Optional[str]:
    """The retrieval headline among metric names: recall@100, else the deepest recall@K (None without recall)."""
    cutoffs = sorted(int(n.split("@")[1]) for n in names if n.startswith("recall@") and n.split("@")[1].isdigit())
    if not cutoffs:
        return None
    return "recall@100" if 100 in cutoffs else "recall@%d" % cutoffs[-1]


def _strongest(report: SearchMetrics, view: str, metric: str) -> Optional[str]:
    scored = [(s.value(view, metric), s.key) for s in report.systems if s.kind == "baseline" and s.value(view, metric) is not None]
    return max(scored)[1] if scored else None


def search_headline(report: SearchMetrics) -> list[Versus]:
    """tfrec against the strongest baseline on end-to-end NDCG@10, retrieval recall@100 and re-rank NDCG@10."""
    systems = {s.key: s for s in report.systems}
    out = []
    for view, key, metric in SEARCH_VIEWS:
        system = systems.get(key)
        if system is None or view not in system.views:
            continue
        tested = next((c for c in report.significance if c.view == view and c.system == key
                       and (metric is None or c.metric == metric)), None)
        if tested is not None:
            metric, versus = tested.metric, tested.versus
        else:
            metric = metric or headline_recall(list(system.views[view]))
            versus = _strongest(report, view, metric) if metric else None
        if metric is None or versus not in systems or system.value(view, metric) is None:
            continue
        value, base = system.value(view, metric), systems[versus].value(view, metric)
        diff = tested.mean_diff if tested is not None and tested.mean_diff is not None else (
            None if base is None else value - base)
        out.append(Versus("%s %s" % (VIEW_HEADINGS[view], metric_label(metric)), system.label, value, systems[versus].label, base,
                          diff, tested.low if tested else None, tested.high if tested else None, tested.n_queries if tested else None))
    return out


def _number(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def recommendation_headline(metrics: Mapping[str, Any]) -> list[Versus]:
    """The trained model against the strongest baseline on Recall@10 and NDCG@10 over users."""
    systems = metrics.get("systems") or {}
    model = metrics.get("model")
    if model not in systems:
        model = next((k for k, s in systems.items() if isinstance(s, Mapping) and s.get("kind") == "model"), None)
    if model is None:
        return []
    out = []
    for metric in RECOMMENDATION_METRICS:
        value = _number(systems[model].get(metric))
        scored = [(v, k) for k, s in systems.items() if isinstance(s, Mapping) and s.get("kind") == "baseline"
                  and (v := _number(s.get(metric))) is not None]
        if value is None or not scored:
            continue
        base, versus = max(scored)
        tested = next((t for t in metrics.get("significance") or [] if isinstance(t, Mapping) and t.get("system") == model
                       and t.get("versus") == versus and t.get("metric") == metric), None) or {}
        diff = _number(tested.get("mean_diff"))
        out.append(Versus(metric_label(metric), str(systems[model].get("label") or model), value,
                          str(systems[versus].get("label") or versus), base, value - base if diff is None else diff,
                          _number(tested.get("low")), _number(tested.get("high")), _number(tested.get("n_users"))))
    return out


def headline_table(rows: Sequence[Versus], unit: str = "Queries") -> Table:
    """One row per view: tfrec and the strongest baseline, the difference, its 95% interval, the verdict."""
    cells = []
    for row in rows:
        tone = {BETTER: "good", WORSE: "bad"}.get(row.verdict, "")
        cells.append((Cell(row.view, bold=True), Cell(row.system), Cell(fmt3(row.value), numeric=True), Cell(row.baseline),
                      Cell(fmt3(row.baseline_value), numeric=True), Cell(fmt_signed(row.diff), numeric=True),
                      Cell(row.interval(), numeric=True), Cell(fmt_count(row.n), numeric=True),
                      Cell(row.verdict, bold=row.verdict in (BETTER, WORSE), tone=tone)))
    return Table(("Measure", "tfrec", "Value", "Strongest baseline", "Value", "Difference", "95% interval", unit, "Verdict"),
                 tuple(cells))


def headline_lines(rows: Sequence[Versus], unit: str = "queries") -> list[str]:
    """The headline as fixed-width text lines for the terminal (empty without rows)."""
    if not rows:
        return []
    header = ("", "tfrec", "baseline", "diff", "95% interval", "verdict", "strongest baseline")
    table = [header] + [(r.view, fmt3(r.value), fmt3(r.baseline_value), fmt_signed(r.diff), r.interval(), r.verdict,
                         " ".join(r.baseline.split())) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["tfrec vs the strongest baseline (paired 95%% interval over %s):" % unit]
    for line in table:
        lines.append("  " + "  ".join(cell.ljust(w) if i in (0, 5, 6) else cell.rjust(w)
                                      for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
    if any(r.low is None for r in rows):
        lines.append("  (-: this run saved no paired interval for that measure)")
    return lines


def ranker_sentence(training: Mapping[str, Any]) -> str:
    """Whether the ranker was kept, from ``training.ranker.selection`` ("" when the run has no such record)."""
    ranker = training.get("ranker") if isinstance(training, Mapping) else None
    selection = ranker.get("selection") if isinstance(ranker, Mapping) else None
    if not isinstance(selection, Mapping):
        return ""
    ranked, alone = _number(selection.get("ranker_tune_half_e2e_ndcg@10")), _number(selection.get("retrieval_tune_half_e2e_ndcg@10"))
    n = fmt_count(_number(selection.get("n_queries")))
    if selection.get("kept") == "ranker":
        return ("The ranker improved end-to-end NDCG@10 on the %s held-out tuning queries (%s vs %s for retrieval alone), "
                "so it is kept." % (n, fmt3(ranked), fmt3(alone)))
    if selection.get("kept") == "retrieval":
        return ("The ranker did not improve on retrieval alone on the %s held-out tuning queries (%s vs %s), so results are "
                "served in retrieval order." % (n, fmt3(ranked), fmt3(alone)))
    return ""
