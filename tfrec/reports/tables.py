"""The report's tables as plain data (cells with bold/tone marks), shared by the Markdown and HTML output."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from tfrec.reports.metrics import Export, SearchMetrics, SystemResult, Target, metric_label, metric_sort_key

MISSING = "-"
# A seen-vs-cold gap this much larger (or smaller) than the untrained baselines' gap gets flagged.
GAP_FLAG = 0.05
VIEW_NAMES = {"e2e": "End-to-end", "retrieval": "Retrieval", "rerank": "Re-rank"}


@dataclass(frozen=True)
class Cell:
    """One table cell: display text, whether it is a number, bold, and a tone ("good", "bad", "warn")."""

    text: str
    numeric: bool = False
    bold: bool = False
    tone: str = ""


@dataclass(frozen=True)
class Table:
    """A header and rows of cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def numeric_columns(self) -> list[bool]:
        """Whether each column holds numbers (right-aligned)."""
        return [any(row[i].numeric for row in self.rows) for i in range(len(self.header))]


def fmt3(value: float | None) -> str:
    """A metric with 3 decimals, or "-" when missing."""
    return MISSING if value is None else "%.3f" % value


def fmt_signed(value: float | None) -> str:
    """A difference with its sign and 3 decimals."""
    return MISSING if value is None else "%+.3f" % value


def fmt_count(value: float | None) -> str:
    """A count with thousands separators."""
    return MISSING if value is None else "{:,}".format(int(round(value)))


def fmt_duration(seconds: float) -> str:
    """Seconds as m:ss (h:mm:ss from one hour on)."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return "%d:%02d:%02d" % (hours, minutes, secs) if hours else "%d:%02d" % (minutes, secs)


def fmt_value(value: Any) -> str:
    """A free-form training detail as short text."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "%.6g" % value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return str(value)


def _p_value(p: float | None) -> str:
    if p is None:
        return MISSING
    return "< 0.001" if p < 0.001 else "%.3f" % p


def view_metrics(systems: Sequence[SystemResult], view: str) -> list[str]:
    """Metric keys any system reports in ``view``, in display order."""
    names: list[str] = []
    for system in systems:
        names.extend(name for name in system.views.get(view, {}) if name not in names)
    return sorted(names, key=metric_sort_key)


def _best(values: Sequence[float | None]) -> float | None:
    # compare what is shown, so two values printed alike are both bold
    shown = [round(v, 3) for v in values if v is not None]
    return max(shown) if shown else None


def view_table(systems: Sequence[SystemResult], view: str) -> Table | None:
    """One row per system reporting ``view``, a column per metric, best value per column in bold."""
    rows_for = [s for s in systems if view in s.views]
    names = view_metrics(rows_for, view)
    if not rows_for or not names:
        return None
    best = {name: _best([s.value(view, name) for s in rows_for]) for name in names}
    rows = []
    for system in rows_for:
        cells = [Cell(system.label), Cell(system.kind)]
        for name in names:
            value = system.value(view, name)
            bold = value is not None and round(value, 3) == best[name]
            cells.append(Cell(fmt3(value), numeric=True, bold=bold))
        rows.append(tuple(cells))
    return Table(("System", "Kind") + tuple(metric_label(n) for n in names), tuple(rows))


def _group_rows(systems: Sequence[SystemResult]) -> list[tuple[SystemResult, str, str, float | None, float | None, float | None, float | None]]:
    rows = []
    for system in systems:
        for view, groups in system.groups.items():
            seen, cold = groups.get("seen", {}), groups.get("cold", {})
            names = [n for n in dict.fromkeys(list(seen) + list(cold)) if n != "n_queries"]
            for name in sorted(names, key=metric_sort_key):
                rows.append((system, view, name, seen.get(name), cold.get(name), seen.get("n_queries"), cold.get("n_queries")))
    return rows


def _gap_cell(value: float | None, flagged: bool) -> Cell:
    if not flagged:
        return Cell(fmt_signed(value), numeric=True)
    return Cell("⚠ " + fmt_signed(value), numeric=True, bold=True, tone="warn")


def seen_cold_table(systems: Sequence[SystemResult]) -> Table | None:
    """Seen vs cold metrics per system and view, with each gap compared to the baselines' gap."""
    rows = _group_rows(systems)
    if not rows:
        return None
    baseline_gaps: dict[tuple[str, str], list[float]] = {}
    for system, view, name, seen, cold, _, _ in rows:
        if system.kind == "baseline" and seen is not None and cold is not None:
            baseline_gaps.setdefault((view, name), []).append(seen - cold)
    out = []
    for system, view, name, seen, cold, n_seen, n_cold in rows:
        gap = None if seen is None or cold is None else seen - cold
        reference = baseline_gaps.get((view, name))
        excess = None
        if gap is not None and reference and system.kind != "baseline":
            excess = gap - statistics.median(reference)
        # without a baseline to compare with, the raw gap is the only honesty signal left
        flagged = (excess is not None and abs(excess) >= GAP_FLAG) or (not reference and gap is not None and abs(gap) >= GAP_FLAG)
        out.append((
            Cell(system.label), Cell(VIEW_NAMES.get(view, view)), Cell(metric_label(name)),
            Cell(fmt3(seen), numeric=True), Cell(fmt3(cold), numeric=True),
            _gap_cell(gap, flagged and excess is None),
            _gap_cell(excess, flagged and excess is not None),
            Cell("%s / %s" % (fmt_count(n_seen), fmt_count(n_cold)), numeric=True),
        ))
    header = ("System", "View", "Metric", "Seen", "Cold", "Seen − cold", "Gap − baselines' gap", "Queries seen / cold")
    return Table(header, tuple(out))


def significance_table(report: SearchMetrics) -> Table | None:
    """Paired tests: mean difference, interval, p-value and a plain verdict."""
    if not report.significance:
        return None
    rows = []
    for c in report.significance:
        if c.low is not None and c.high is not None:
            verdict = "better" if c.low > 0 else "worse" if c.high < 0 else "no clear difference"
        elif c.p_value is not None and c.mean_diff is not None:
            verdict = ("better" if c.mean_diff > 0 else "worse") if c.p_value < 0.05 else "no clear difference"
        else:
            verdict = MISSING
        interval = MISSING if c.low is None or c.high is None else "[%s, %s]" % (fmt_signed(c.low), fmt_signed(c.high))
        if c.confidence is not None and interval != MISSING:
            interval = "%g%% %s" % (c.confidence * 100 if c.confidence <= 1 else c.confidence, interval)
        tone = {"better": "good", "worse": "bad"}.get(verdict, "")
        rows.append((
            Cell(report.label(c.system)), Cell(report.label(c.versus)), Cell(VIEW_NAMES.get(c.view, c.view)),
            Cell(metric_label(c.metric)), Cell(fmt_signed(c.mean_diff), numeric=True), Cell(interval, numeric=True),
            Cell(_p_value(c.p_value), numeric=True), Cell(fmt_count(c.n_queries), numeric=True), Cell(verdict, tone=tone),
        ))
    return Table(("System", "Versus", "View", "Metric", "Mean difference", "Interval", "p-value", "Queries", "Verdict"), tuple(rows))


def target_outcome(target: Target) -> str:
    """"met", "missed" or "no value", trusting the run's own verdict when it gave one."""
    if target.met is not None:
        return "met" if target.met else "missed"
    if target.value is None:
        return "no value"
    return "met" if target.value >= target.target else "missed"


def targets_table(report: SearchMetrics) -> Table | None:
    """Each target with the reached value and met/missed."""
    if not report.targets:
        return None
    rows = []
    for t in report.targets:
        outcome = target_outcome(t)
        rows.append((
            Cell(report.label(t.system)), Cell(VIEW_NAMES.get(t.view, t.view)), Cell(metric_label(t.metric)),
            Cell(fmt3(t.target), numeric=True), Cell(fmt3(t.value), numeric=True),
            Cell(outcome, bold=True, tone={"met": "good", "missed": "bad"}.get(outcome, "")),
        ))
    return Table(("System", "View", "Metric", "Target", "Value", "Result"), tuple(rows))


def timings_table(timings: dict[str, float]) -> Table | None:
    """Seconds per step as m:ss, with the total."""
    if not timings:
        return None
    rows = [(Cell(step), Cell(fmt_duration(seconds), numeric=True)) for step, seconds in timings.items()]
    rows.append((Cell("Total", bold=True), Cell(fmt_duration(sum(timings.values())), numeric=True, bold=True)))
    return Table(("Step", "Time (m:ss)"), tuple(rows))


def exports_table(exports: Sequence[Export]) -> Table | None:
    """Exported models with path and size."""
    if not exports:
        return None
    rows = [(Cell(e.name), Cell(e.path or MISSING), Cell(MISSING if e.mb is None else "%.1f" % e.mb, numeric=True)) for e in exports]
    return Table(("Export", "Path", "Size (MB)"), tuple(rows))
