"""The search report of a run (report.md, report.html and their PNG charts) and the summary `tfrec train` prints."""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Optional

from tfrec.reports.details import detail_blocks
from tfrec.reports.headline import headline_lines, headline_table, ranker_sentence, search_headline
from tfrec.reports.markup import Block, Bullets, Figure, Heading, Paragraph, TableBlock, write_report
from tfrec.reports.metrics import VIEWS, SearchMetrics, parse_metrics, recall_cutoff
from tfrec.reports.plots import BarRow, Line, Panel, axis_start_near, bar_panels, color_for, recall_curves, to_png
from tfrec.reports.sections import PER_QUERY_CHART, TRAINING_CHART, RunExtras, distribution_section, gallery_section, training_section
from tfrec.reports.tables import (
    SMALL_GROUP, clip_words, exports_table, fmt3, fmt_count, seen_cold_table, significance_table, small_groups, timings_table, view_table,
)

RECALL_CHART = "recall_at_k.png"
NDCG_CHART = "ndcg.png"
CHARTS = (RECALL_CHART, NDCG_CHART, PER_QUERY_CHART, TRAINING_CHART)
SUMMARY_RECALL_CUTOFFS = (10, 100, 1000)  # the summary's recall columns, among those the run evaluated
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
    about = ("A product is seen when a training judgment names it. NDCG splits the queries: seen queries have at least "
             "one seen judged product, cold queries have none; Recall@K splits each query's positives into seen and "
             "cold ones, so a query with both counts in both groups.")
    table = seen_cold_table(report.systems)
    if table is None:
        return [Heading("Seen and cold queries"), _say(about), _say("No seen/cold split was reported.", note=True)]
    note = ("Grey: a group of fewer than %d queries, too few to read a difference from." % SMALL_GROUP
            if small_groups(table) else "")
    return [Heading("Seen and cold queries"), _say(about), TableBlock(table, note)]


def _optional_table(heading: str, table: Any, note: str = "") -> list[Block]:
    return [Heading(heading), TableBlock(table, note)] if table is not None else []


def _conventions(report: SearchMetrics) -> list[Block]:
    pos = "%g" % report.positive_relevance
    parts = (
        ("Re-rank metrics order only each query's judged products. NDCG@k uses gain ", ""), ("2^(rel-1) - 1", "code"),
        (" (relevance 1 scores 0, 3 scores 3) and discount ", ""), ("1 / log2(rank + 1)", "code"),
        (", divided by the DCG of the best ordering of the query's judged products. Every query counts in NDCG "
         "means: a query whose judged products all have relevance 1 (ideal DCG 0) scores 0, so no system can average "
         "1.0%s. Positives are judged products with relevance ≥ %s; Recall@K is the share of a query's positives in "
         "the top K retrieved from %s and MRR is the mean reciprocal rank of the first positive, both averaged over the "
         "queries with at least one positive%s; queries without one are left out of them. "
         "End-to-end NDCG@10 scores the final top 10 from the whole catalog with the same gain, discount and ideal; "
         "unjudged products count as gain 0, so it understates quality and is not comparable with re-rank NDCG. "
         "Intervals: a paired bootstrap over queries of the difference tfrec minus baseline; the verdict is better or "
         "worse only when the 95%% interval excludes 0." % (_perfect(report), pos, _catalog(report), _with_positive(report)), ""),
    )
    return [Heading("Metric conventions"), Paragraph(parts)]


def _perfect(report: SearchMetrics) -> str:
    perfect = next((s.value("rerank", "ndcg@10") for s in report.systems if s.key == "perfect"), None)
    return "" if perfect is None else " (Perfect order scores %s here)" % fmt3(perfect)


def _with_positive(report: SearchMetrics) -> str:
    n, total = report.n_queries.get("retrieval"), report.n_queries.get("e2e")
    return "" if n is None or total is None else " (%s of the %s %s queries)" % (fmt_count(n), fmt_count(total), report.split)


def _training(report: SearchMetrics, extras: RunExtras) -> list[Block]:
    blocks: list[Block] = []
    for name, details in report.training.items():
        blocks += detail_blocks(name, details, skip=("selection",))  # the ranker's selection is the headline's sentence
    return training_section(extras) + ([Heading("Training")] + blocks if blocks else [])


def _e2e_baseline(report: SearchMetrics) -> Optional[str]:
    """The strongest baseline on end-to-end NDCG@10 (the one tfrec is compared with in the headline)."""
    scored = [(s.value("e2e", "ndcg@10"), s.key) for s in report.systems if s.kind == "baseline" and s.value("e2e", "ndcg@10") is not None]
    return max(scored)[1] if scored else None


def _per_query(report: SearchMetrics, extras: RunExtras) -> list[Block]:
    model = "tfrec_search" if any(s.key == "tfrec_search" for s in report.systems) else None
    if model is None:
        return []
    keys = [model] + [k for k in [_e2e_baseline(report)] if k]
    systems = [(k, report.label(k)) for k in keys]
    about = ("Which queries fail: the spread of end-to-end NDCG@10 over the %s valid queries, for tfrec and the strongest "
             "baseline on that measure." % fmt_count(report.n_queries.get("e2e")))
    blocks = distribution_section(extras, systems, "ndcg@10_e2e", "Per-query results", about, PER_QUERY_CHART)
    return blocks + gallery_section(extras.worst, "NDCG@10", report.label(model), extras.missing)


def _headline(report: SearchMetrics) -> list[Block]:
    rows = search_headline(report)
    sentence = ranker_sentence(report.training)
    if not rows and not sentence:
        return []
    blocks: list[Block] = [Heading("tfrec vs the strongest baseline")]
    if rows:
        blocks += [_say("For each measure, tfrec against the strongest baseline measured in the same run on the same %s "
                        "queries; the difference comes with its paired 95%% interval, and the verdict says better or worse "
                        "only when that interval excludes 0." % report.split),
                   TableBlock(headline_table(rows), "" if all(r.low is not None for r in rows) else
                              "\"-\": this run saved no paired interval for that measure (runs of older tfrec versions).")]
    return blocks + ([Paragraph(((sentence, "strong"),))] if sentence else [])


def report_blocks(report: SearchMetrics, extras: Optional[RunExtras] = None) -> list[Block]:
    """The whole report, in reading order; ``extras`` adds per-query charts, the worst queries and training curves."""
    extras = extras or RunExtras()
    blocks: list[Block] = [Heading(_title(report), level=1), _meta(report)]
    blocks += _headline(report)
    blocks += _view_section(report, "e2e", "End-to-end search", "Each system retrieves from %s and its final top 10 is "
                            "scored with NDCG@10; unjudged products count as gain 0." % _catalog(report))
    blocks += _view_section(report, "retrieval", "Retrieval", "Recall@K and MRR over %s." % _catalog(report))
    recall = recall_figure(report)
    blocks += [recall] if recall else []
    blocks += _view_section(report, "rerank", "Re-ranking", "Each system orders only the judged products of a query.")
    ndcg = ndcg_figure(report)
    blocks += [ndcg] if ndcg else []
    blocks += _seen_cold_section(report)
    blocks += _optional_table("All paired comparisons", significance_table(report),
                              "Paired over queries: mean of (system − versus) with its 95% interval; better or worse only "
                              "when the interval excludes 0.")
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
    return clip_words(" ".join(text.split()), width)


def _summary_columns(report: SearchMetrics) -> list[tuple[str, str, str]]:
    """(header, view, metric) of the summary: end-to-end NDCG@10, the recall cut-offs the run evaluated, MRR, re-rank NDCG@10."""
    evaluated = {recall_cutoff(name) for s in report.systems for name in s.views.get("retrieval", {})} - {None}
    shown = [k for k in SUMMARY_RECALL_CUTOFFS if k in evaluated]
    if evaluated and max(evaluated) not in shown:
        shown.append(max(evaluated))  # the deepest cut-off evaluated, whatever evaluation.ks holds
    return ([("E2E NDCG@10", "e2e", "ndcg@10")] + [("R@%d" % k, "retrieval", "recall@%d" % k) for k in shown]
            + [("MRR", "retrieval", "mrr"), ("Re-rank NDCG@10", "rerank", "ndcg@10")])


def summary_table(metrics: Mapping[str, Any]) -> str:
    """A fixed-width table, one row per system, then tfrec against the strongest baseline and whether the ranker was kept."""
    report = parse_metrics(metrics)
    columns = _summary_columns(report)
    label_w = min(40, max(len("System"), *(len(" ".join(s.label.split())) for s in report.systems)))
    widths = [max(len(name), 6) for name, _, _ in columns]
    header = "%-*s  %s" % (label_w, "System", "  ".join("%*s" % (w, name) for w, (name, _, _) in zip(widths, columns)))
    lines = ["Search results: %s, %s split" % (report.dataset, report.split), header, "-" * len(header)]
    for system in report.systems:
        values = ("%*s" % (w, fmt3(system.value(view, metric))) for w, (_, view, metric) in zip(widths, columns))
        lines.append("%-*s  %s" % (label_w, _plain(system.label, label_w), "  ".join(values)))
    headline = headline_lines(search_headline(report))
    sentence = ranker_sentence(report.training)
    if headline or sentence:
        lines.append("")
    return "\n".join(lines + headline + ([sentence] if sentence else []))
