"""The report's tables as plain data (cells with bold/tone marks), shared by the Markdown and HTML output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tfrec.reports.metrics import Export, SearchMetrics, SystemResult, metric_label, metric_sort_key

MISSING = "-"
# Groups of fewer queries (or users) than this are greyed in the seen/cold tables: too few to read a difference from.
SMALL_GROUP = 30
VIEW_NAMES = {"e2e": "End-to-end", "retrieval": "Retrieval", "rerank": "Re-rank"}


@dataclass(frozen=True)
class Cell:
    """One table cell: display text, whether it is a number, bold, and a tone ("good", "bad", "muted")."""

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


def clip_words(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut at a word boundary (where there is one) and marked with "..."."""
    if len(text) <= width:
        return text
    cut = text[: width - 3]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "..."


def fmt_value(value: Any) -> str:
    """A free-form training detail as short text: lists as "a, b", mappings as "key value, ..."."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "%.6g" % value
    if isinstance(value, Mapping):
        return ", ".join("%s %s" % (k, fmt_value(v)) for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_value(v) for v in value) or "none"
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


def _group_metric(systems: Sequence[SystemResult], view: str, preferred: str) -> str | None:
    names = {n for s in systems for g in s.groups.get(view, {}).values() for n in g if n != "n_queries"}
    if preferred in names:
        return preferred
    recalls = sorted((int(n.split("@")[1]), n) for n in names if n.startswith("recall@") and n.split("@")[1].isdigit())
    return recalls[-1][1] if view == "retrieval" and recalls else None


def _group_count(systems: Sequence[SystemResult], view: str, group: str) -> float | None:
    for system in systems:
        n = system.groups.get(view, {}).get(group, {}).get("n_queries")
        if n is not None:
            return n
    return None


def seen_cold_table(systems: Sequence[SystemResult]) -> Table | None:
    """One row per system: each view's headline metric on seen and on cold queries, then a row of group sizes."""
    columns = []
    for view, preferred in (("e2e", "ndcg@10"), ("retrieval", "recall@100"), ("rerank", "ndcg@10")):
        name = _group_metric(systems, view, preferred)
        if name is not None:
            # re-rank groups are the end-to-end ones (the same queries); older runs saved their size only there
            counts = {g: _group_count(systems, view, g) or (_group_count(systems, "e2e", g) if view == "rerank" else None)
                      for g in ("seen", "cold")}
            columns += [(view, name, g, counts[g]) for g in ("seen", "cold")]
    rows = []
    for system in systems:
        if not any(system.groups.get(view, {}).get(g, {}).get(name) is not None for view, name, g, _ in columns):
            continue
        cells = [Cell(system.label)]
        for view, name, group, n in columns:
            value = system.groups.get(view, {}).get(group, {}).get(name)
            cells.append(Cell(fmt3(value), numeric=True, tone="muted" if n is not None and n < SMALL_GROUP else ""))
        rows.append(tuple(cells))
    if not rows:
        return None
    rows.append((Cell("Queries in the group"),) + tuple(
        Cell(fmt_count(n), numeric=True, tone="muted") for _, _, _, n in columns))
    header = ("System",) + tuple("%s %s, %s" % (VIEW_NAMES[view], metric_label(name), group) for view, name, group, _ in columns)
    return Table(header, tuple(rows))


def small_groups(table: Table) -> bool:
    """Whether a seen/cold table greyed any group for having fewer than :data:`SMALL_GROUP` members."""
    return any(cell.tone == "muted" for row in table.rows[:-1] for cell in row)


def significance_table(report: SearchMetrics) -> Table | None:
    """Paired tests: mean difference, interval, p-value and a plain verdict."""
    if not report.significance:
        return None
    rows = []
    for c in report.significance:
        verdict = MISSING if c.low is None or c.high is None else (
            "better" if c.low > 0 else "worse" if c.high < 0 else "no measurable difference")
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
