"""The search report of a run (report.md, report.html and their PNG charts) and the summary `tfrec train` prints."""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Optional

from tfrec.reports.markup import Block, Bullets, Figure, Heading, KeyValues, Paragraph, TableBlock, write_report
from tfrec.reports.metrics import VIEWS, SearchMetrics, metric_label, parse_metrics, recall_cutoff
from tfrec.reports.plots import BarRow, Line, Panel, axis_start_near, bar_panels, color_for, recall_curves, to_png
from tfrec.reports.sections import PER_QUERY_CHART, TRAINING_CHART, RunExtras, distribution_section, gallery_section, training_section
from tfrec.reports.tables import (
    GAP_FLAG, exports_table, fmt3, fmt_count, fmt_value, seen_cold_table, significance_table, target_outcome,
    targets_table, timings_table, view_table,
)

RECALL_CHART = "recall_at_k.png"
NDCG_CHART = "ndcg.png"
CHARTS = (RECALL_CHART, NDCG_CHART, PER_QUERY_CHART, TRAINING_CHART)
SUMMARY_COLUMNS = (("E2E NDCG@10", "e2e", "ndcg@10"), ("R@10", "retrieval", "recall@10"), ("R@100", "retrieval", "recall@100"),
                   ("R@1000", "retrieval", "recall@1000"), ("MRR", "retrieval", "mrr"), ("Re-rank NDCG@10", "rerank", "ndcg@10"))
_VIEW_WORDS = {"e2e": "end-to-end", "retrieval": "retrieval", "rerank": "re-rank"}


def _when(created: str) -> str:
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return created  # not ISO: show it as the run wrote it


def _title(report: SearchMetrics) -> str:
    date = _when(report.created)
    return "Search report: %s, %s split%s" % (report.dataset, report.split, ", " + date if date else "")


def _catalog(report: SearchMetrics) -> str:
    return "the whole catalog of %s products" % fmt_count(report.catalog_size) if report.catalog_size else "the whole catalog"


def _queries(report: SearchMetrics, view: str) -> str:
    n = report.n_queries.get(view)
    return " %s %s queries." % (fmt_count(n), report.split) if n is not None else ""


def _meta(report: SearchMetrics) -> Paragraph:
    parts = []
    if report.run_name:
        parts.append("Run %s" % report.run_name)
    if report.catalog_size:
        parts.append("catalog of %s products" % fmt_count(report.catalog_size))
    columns = _catalog_columns(report)
    if columns:
        parts.append("catalog columns in the models: " + columns)
    order = sorted(report.n_queries, key=lambda v: VIEWS.index(v) if v in VIEWS else len(VIEWS))
    counts = ["%s %s" % (fmt_count(report.n_queries[v]), _VIEW_WORDS.get(v, v)) for v in order if report.n_queries[v] is not None]
    if counts:
        parts.append("queries: " + ", ".join(counts))
    parts.append("%d systems" % len(report.systems))
    return _say("; ".join(parts) + ".", note=True)


def _catalog_columns(report: SearchMetrics) -> str:
    """The catalog columns the models fuse, from the training records ("price (numeric), brand (categorical)"; "" for none)."""
    listed = next((d["catalog_columns"] for d in report.training.values() if isinstance(d, Mapping) and d.get("catalog_columns")), None)
    if not listed:
        return ""
    return ", ".join("%s (%s)" % (name, kind) for kind in ("numeric", "categorical") for name in listed.get(kind, []))


def _say(text: str, note: bool = False) -> Paragraph:
    return Paragraph(((text, ""),), note=note)


def _colors(report: SearchMetrics) -> dict[str, str]:
    return {system.key: color_for(i) for i, system in enumerate(report.systems)}


def recall_lines(report: SearchMetrics) -> list[Line]:
    """One recall@K line per system that reports recall at some K (tfrec solid, others dashed)."""
    colors = _colors(report)
    lines = []
    for system in report.systems:
        points = [(float(k), v) for name, v in system.views.get("retrieval", {}).items() if (k := recall_cutoff(name)) and v is not None]
        if points:
            lines.append(Line(system.label, colors[system.key], system.kind != "tfrec", tuple(sorted(points))))
    return lines


def recall_figure(report: SearchMetrics) -> Figure | None:
    """The recall@K curve of every system that reports recall at some K, or None if none does."""
    lines = recall_lines(report)
    if not lines:
        return None
    png = to_png(recall_curves(lines, "Recall@K over the whole catalog"))
    caption = "Recall@K over %s; x axis: K on a log scale, a gridline at every K evaluated." % _catalog(report)
    if any(line.dashed for line in lines) and not all(line.dashed for line in lines):
        caption += " Solid lines: tfrec systems; dashed: baselines and references."
    return Figure(RECALL_CHART, png, "Recall@K curves", caption)


def _axis_end(values: list[float]) -> float:
    top = max(values)
    return 1.0 if 0.5 < top <= 1.0 else max(0.1, math.ceil(top * 10 + 1e-9) / 10)


def ndcg_bars(report: SearchMetrics) -> tuple[list[BarRow], list[Panel], list[str], list[str]] | None:
    """Rows, panels, views shown and axis notes of the NDCG@10 bar chart, or None if no system reports NDCG@10."""
    views = [(view, [s.value(view, "ndcg@10") for s in report.systems]) for view in ("e2e", "rerank")]
    views = [(view, values) for view, values in views if any(v is not None for v in values)]
    if not views:
        return None
    panels, notes = [], []
    for view, values in views:
        present = [v for v in values if v is not None]
        # re-rank NDCG of any ordering sits high (labels lean relevant), so its axis starts near the lowest bar
        start = axis_start_near(present) if view == "rerank" and min(present) >= 0.5 else 0.0
        name = "%s NDCG@10" % ("End-to-end" if view == "e2e" else "Re-rank")
        panels.append(Panel("%s (axis from %s)" % (name, "%g" % start), start, _axis_end(present)))
        if start > 0:
            references = [s for s in report.systems if s.kind == "reference" and s.value(view, "ndcg@10") is not None]
            why = ("%s already scores %s there" % (references[0].label, fmt3(references[0].value(view, "ndcg@10")))
                   if references else "every ordering of the judged products scores high")
            notes.append("The re-rank axis starts at %g, not 0: %s, so the differences that matter are small." % (start, why))
    colors = _colors(report)
    rows = [BarRow(s.label, colors[s.key], tuple(s.value(view, "ndcg@10") for view, _ in views))
            for s in report.systems if any(s.value(view, "ndcg@10") is not None for view, _ in views)]
    return rows, panels, [view for view, _ in views], notes


def ndcg_figure(report: SearchMetrics) -> Figure | None:
    """Bars of end-to-end and re-rank NDCG@10 per system, or None if no system reports either."""
    bars = ndcg_bars(report)
    if bars is None:
        return None
    rows, panels, views, notes = bars
    png = to_png(bar_panels(rows, panels, "NDCG@10 per system"))
    what = {"e2e": "end-to-end NDCG@10 (top 10 from the whole catalog, unjudged = gain 0)",
            "rerank": "re-rank NDCG@10 (judged products only)"}
    caption = "Bars: %s; each panel has its own axis." % " and ".join(what[view] for view in views)
    return Figure(NDCG_CHART, png, "NDCG@10 bars", " ".join([caption] + notes))


def _view_section(report: SearchMetrics, view: str, heading: str, about: str) -> list[Block]:
    blocks: list[Block] = [Heading(heading), _say(about + _queries(report, view))]
    table = view_table(report.systems, view)
    if table is None:
        return blocks + [_say("No system reported %s metrics." % _VIEW_WORDS[view], note=True)]
    return blocks + [TableBlock(table, "Best value per column in bold; \"-\": not reported.")]


def _seen_cold_section(report: SearchMetrics) -> list[Block]:
    about = ("Honesty check for the leakage trap: the same metrics split by whether products occur in the training "
             "judgments (seen) or not (cold); for Recall@K over the seen and over the cold positives, for NDCG over "
             "queries with at least one seen judged product and over queries whose judged products are all cold. "
             "Untrained baselines show how much the two groups "
             "differ anyway; a system whose gap differs from their median gap by %g or more (or, with no baseline "
             "for that metric, whose own gap is that large) is flagged ⚠: it may be using whether a product was "
             "seen in training." % GAP_FLAG)
    table = seen_cold_table(report.systems)
    body: list[Block] = [TableBlock(table)] if table else [_say("No seen/cold split was reported.", note=True)]
    return [Heading("Seen vs cold"), _say(about)] + body


def _optional_table(heading: str, table: Any, note: str = "") -> list[Block]:
    return [Heading(heading), TableBlock(table, note)] if table is not None else []


def _conventions(report: SearchMetrics) -> list[Block]:
    pos = "%g" % report.positive_relevance
    parts = (
        ("Re-rank metrics order only each query's judged products. NDCG@k uses gain ", ""), ("2^(rel-1) - 1", "code"),
        (" (relevance 1 scores 0, 3 scores 3) and discount ", ""), ("1 / log2(rank + 1)", "code"),
        (", divided by the DCG of the best ordering of the query's judged products; queries whose judged products "
         "all have relevance 1 (ideal DCG 0) are left out of NDCG means. Positives are judged products "
         "with relevance ≥ %s; Recall@K is the share of a query's positives in the top K retrieved from %s, over "
         "queries with at least one positive, and MRR is the mean reciprocal rank of the first positive. "
         "End-to-end NDCG@10 scores the final top 10 from the whole catalog with the same gain, discount and ideal; "
         "unjudged products count as gain 0, so it understates quality and is not comparable with re-rank NDCG." % (pos, _catalog(report)), ""),
    )
    return [Heading("Metric conventions"), Paragraph(parts)]


def _training(report: SearchMetrics, extras: RunExtras) -> list[Block]:
    blocks: list[Block] = []
    for name, details in report.training.items():
        if details:
            blocks += [Heading(name[:1].upper() + name[1:], level=3), KeyValues(tuple((str(k), fmt_value(v)) for k, v in details.items()))]
    return training_section(extras) + ([Heading("Training")] + blocks if blocks else [])


def _e2e_baseline(report: SearchMetrics) -> Optional[str]:
    """The strongest baseline on end-to-end NDCG@10 (what the end-to-end target is measured against)."""
    scored = [(s.value("e2e", "ndcg@10"), s.key) for s in report.systems if s.kind == "baseline" and s.value("e2e", "ndcg@10") is not None]
    return max(scored)[1] if scored else None


def _per_query(report: SearchMetrics, extras: RunExtras) -> list[Block]:
    model = "tfrec_search" if any(s.key == "tfrec_search" for s in report.systems) else None
    if model is None:
        return []
    keys = [model] + [k for k in [_e2e_baseline(report)] if k]
    systems = [(k, report.label(k)) for k in keys]
    about = ("Which queries fail: the spread of end-to-end NDCG@10 over the %s valid queries, for tfrec and the baseline "
             "its target is measured against." % fmt_count(report.n_queries.get("e2e")))
    blocks = distribution_section(extras, systems, "ndcg@10_e2e", "Per-query results", about, PER_QUERY_CHART)
    return blocks + gallery_section(extras.worst, "NDCG@10", report.label(model), extras.missing)


def report_blocks(report: SearchMetrics, extras: Optional[RunExtras] = None) -> list[Block]:
    """The whole report, in reading order; ``extras`` adds per-query charts, the worst queries and training curves."""
    extras = extras or RunExtras()
    blocks: list[Block] = [Heading(_title(report), level=1), _meta(report)]
    blocks += _optional_table("Targets", targets_table(report))
    blocks += _view_section(report, "e2e", "End-to-end search", "Each system retrieves from %s and its final top 10 is "
                            "scored with NDCG@10; unjudged products count as gain 0." % _catalog(report))
    blocks += _view_section(report, "retrieval", "Retrieval", "Recall@K and MRR over %s." % _catalog(report))
    recall = recall_figure(report)
    blocks += [recall] if recall else []
    blocks += _view_section(report, "rerank", "Re-ranking", "Each system orders only the judged products of a query.")
    ndcg = ndcg_figure(report)
    blocks += [ndcg] if ndcg else []
    blocks += _seen_cold_section(report)
    blocks += _optional_table("Significance", significance_table(report),
                              "Paired over queries: mean of (system − versus). Verdict from the interval when given, else p < 0.05.")
    blocks += _per_query(report, extras)
    blocks += _optional_table("Timings", timings_table(report.timings))
    blocks += _training(report, extras)
    blocks += _optional_table("Exports", exports_table(report.exports))
    blocks += [Heading("Notes"), Bullets(report.notes)] if report.notes else []
    return blocks + _conventions(report)


def write_search_report(metrics: Mapping[str, Any], run_dir: str | Path, extras: Optional[RunExtras] = None) -> tuple[Path, Path, list[Path]]:
    """Write report.md, its PNG charts and a self-contained report.html into ``run_dir``; returns (md, html, charts)."""
    report = parse_metrics(metrics)
    return write_report(Path(run_dir), _title(report), report_blocks(report, extras), CHARTS)


def _plain(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def summary_table(metrics: Mapping[str, Any]) -> str:
    """A fixed-width table, one row per system, then one line per target with met/missed."""
    report = parse_metrics(metrics)
    label_w = min(40, max(len("System"), *(len(" ".join(s.label.split())) for s in report.systems)))
    widths = [max(len(name), 6) for name, _, _ in SUMMARY_COLUMNS]
    header = "%-*s  %s" % (label_w, "System", "  ".join("%*s" % (w, name) for w, (name, _, _) in zip(widths, SUMMARY_COLUMNS)))
    lines = ["Search results: %s, %s split" % (report.dataset, report.split), header, "-" * len(header)]
    for system in report.systems:
        values = ("%*s" % (w, fmt3(system.value(view, metric))) for w, (_, view, metric) in zip(widths, SUMMARY_COLUMNS))
        lines.append("%-*s  %s" % (label_w, _plain(system.label, label_w), "  ".join(values)))
    if report.targets:
        lines.append("Targets:")
        for t in report.targets:
            lines.append("  %-8s %s %s of %s: %s (target %s)" % (
                target_outcome(t), _VIEW_WORDS.get(t.view, t.view), metric_label(t.metric),
                _plain(report.label(t.system), 60), fmt3(t.value), fmt3(t.target)))
    return "\n".join(lines)

