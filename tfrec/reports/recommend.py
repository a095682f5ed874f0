"""The recommendation report of a run: report.md and a self-contained report.html with PNG charts.

It renders the dict of :func:`tfrec.evaluation.recommend.recommendation_report` (accuracy and
beyond-accuracy metrics per system, paired bootstrap intervals against the reference) with the
shared blocks of :mod:`tfrec.reports.markup`, tables of :mod:`tfrec.reports.tables` and charts of
:mod:`tfrec.reports.plots`.
"""
from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from tfrec.config.schema import Config
from tfrec.reports.headline import headline_lines, headline_table, recommendation_headline, verdict
from tfrec.reports.markup import Block, Bullets, Figure, Heading, Paragraph, TableBlock, write_report
from tfrec.reports.metrics import metric_label
from tfrec.reports.plots import BarRow, Panel, bar_panels, color_for, to_png
from tfrec.reports.sections import PER_USER_CHART, TRAINING_CHART, RunExtras, data_text, distribution_section, training_section
from tfrec.reports.tables import SMALL_GROUP, Cell, Table, fmt3, fmt_count, fmt_signed

RECALL_CHART = "recall_at_k.png"
NDCG_CHART = "ndcg_at_k.png"
BEYOND_CHART = "beyond_accuracy.png"
CHARTS = (RECALL_CHART, NDCG_CHART, BEYOND_CHART, PER_USER_CHART, TRAINING_CHART)
BEYOND_FAMILIES = ("coverage", "diversity", "novelty")
_BEYOND_NAMES = {"coverage": "Coverage", "diversity": "Diversity", "novelty": "Novelty"}


def _label(name: str) -> str:
    family, _, k = name.partition("@")
    if family in _BEYOND_NAMES:
        return "%s@%s" % (_BEYOND_NAMES[family], k) if k else _BEYOND_NAMES[family]
    return metric_label(name)


def _cutoff_metrics(systems: Mapping[str, Mapping[str, Any]], family: str) -> list[str]:
    found = {name for entry in systems.values() for name in entry if re.fullmatch(r"%s@\d+" % family, name)}
    return sorted(found, key=lambda name: int(name.partition("@")[2]))


def _systems(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    systems = report.get("systems")
    if not isinstance(systems, Mapping) or not systems:
        raise ValueError("report['systems'] must be a non-empty dict of systems, got %r" % (systems,))
    for name, entry in systems.items():
        if not isinstance(entry, Mapping):
            raise ValueError("report['systems'][%r] must be a dict of metrics, got %r" % (name, entry))
    return dict(systems)


def _value(entry: Mapping[str, Any], name: str) -> float | None:
    value = entry.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def metrics_table(report: Mapping[str, Any]) -> Table:
    """Systems x metrics: Recall@K, NDCG@K, MRR (best per column in bold), then coverage, diversity, novelty."""
    systems = _systems(report)
    accuracy = _cutoff_metrics(systems, "recall") + _cutoff_metrics(systems, "ndcg")
    accuracy += ["mrr"] if any("mrr" in entry for entry in systems.values()) else []
    beyond = [name for family in BEYOND_FAMILIES for name in _cutoff_metrics(systems, family)]
    # higher is not simply better for diversity or novelty, so only accuracy columns mark a best value
    best = {}
    for name in accuracy:
        shown = [round(v, 3) for entry in systems.values() if (v := _value(entry, name)) is not None]
        best[name] = max(shown) if shown else None
    rows = []
    for key, entry in systems.items():
        cells = [Cell(str(entry.get("label") or key)), Cell(str(entry.get("kind") or ""))]
        for name in accuracy:
            value = _value(entry, name)
            cells.append(Cell(fmt3(value), numeric=True, bold=value is not None and round(value, 3) == best[name]))
        cells += [Cell(fmt3(_value(entry, name)), numeric=True) for name in beyond]
        rows.append(tuple(cells))
    return Table(("System", "Kind") + tuple(_label(name) for name in accuracy + beyond), tuple(rows))


def interval_table(report: Mapping[str, Any]) -> Table | None:
    """Paired bootstrap over users: mean difference vs the reference, its interval, p-value and a verdict."""
    tests = report.get("significance") or []
    if not tests:
        return None
    systems = _systems(report)

    def label(key: str) -> str:
        return str(systems.get(key, {}).get("label") or key)

    rows = []
    for test in tests:
        low, high = _value(test, "low"), _value(test, "high")
        outcome = verdict(low, high)
        confidence = _value(test, "confidence") or 0.95
        interval = "-" if low is None or high is None else "%g%% [%s, %s]" % (confidence * 100, fmt_signed(low), fmt_signed(high))
        p = _value(test, "p_value")
        rows.append((
            Cell(label(str(test.get("system")))), Cell(label(str(test.get("versus")))), Cell(_label(str(test.get("metric")))),
            Cell(fmt_signed(_value(test, "mean_diff")), numeric=True), Cell(interval, numeric=True),
            Cell("-" if p is None else "< 0.001" if p < 0.001 else "%.3f" % p, numeric=True),
            Cell(fmt_count(_value(test, "n_users")), numeric=True),
            Cell(outcome, tone={"better": "good", "worse": "bad"}.get(outcome, "")),
        ))
    return Table(("System", "Versus", "Metric", "Mean difference", "Interval", "p-value", "Users", "Verdict"), tuple(rows))


def seen_cold_table(report: Mapping[str, Any]) -> Table | None:
    """One row per system: Recall@10 and NDCG@10 on valid targets seen in training and on cold ones, then the group sizes."""
    split = report.get("seen_cold")
    if not isinstance(split, Mapping):
        return None
    systems = _systems(report)
    total, cold = split.get("valid_targets"), split.get("cold_targets")
    sizes = {"seen": total - cold if isinstance(total, int) and isinstance(cold, int) else None, "cold": cold}
    columns = [(metric, group) for metric in ("recall@10", "ndcg@10") for group in ("seen", "cold")]
    rows = []
    for key, system in systems.items():
        parts = split.get(key)
        if not isinstance(parts, Mapping):
            continue
        cells = [Cell(str(system.get("label") or key))]
        for metric, group in columns:
            n = sizes[group]
            value = _value(parts.get(group) or {}, metric)
            cells.append(Cell(fmt3(value), numeric=True, tone="muted" if n is not None and n < SMALL_GROUP else ""))
        rows.append(tuple(cells))
    if not rows:
        return None
    rows.append((Cell("Users in the group"),) + tuple(Cell(fmt_count(sizes[g]), numeric=True, tone="muted") for _, g in columns))
    return Table(("System",) + tuple("%s, %s" % (_label(m), g) for m, g in columns), tuple(rows))


def _seen_cold(report: Mapping[str, Any]) -> list[Block]:
    table = seen_cold_table(report)
    if table is None:
        return []
    small = any(cell.tone == "muted" for row in table.rows[:-1] for cell in row)
    about = ("A valid target is seen when it appears in the training interactions (in a history or as a target); a cold "
             "target never does, so a model can only reach it through its text.")
    note = "Grey: a group of fewer than %d users, too few to read a difference from." % SMALL_GROUP if small else ""
    return [Heading("Seen and cold targets"), Paragraph(((about, ""),)), TableBlock(table, note)]


def _headline(report: Mapping[str, Any]) -> list[Block]:
    rows = recommendation_headline(report)
    if not rows:
        return []
    about = ("The trained model against the strongest baseline on each measure, over the same %s users; the difference "
             "comes with its paired 95%% interval, and the verdict says better or worse only when that interval excludes 0."
             % fmt_count(report.get("n_users")))
    note = "" if all(r.low is not None for r in rows) else "\"-\": this run saved no paired interval for that measure."
    return [Heading("tfrec vs the strongest baseline"), Paragraph(((about, ""),)), TableBlock(headline_table(rows, "Users"), note)]


def _axis_end(values: Sequence[float]) -> float:
    return min(1.0, max(0.1, math.ceil(max(values) * 10 + 1e-9) / 10))


def bars_figure(report: Mapping[str, Any], family: str, file_name: str) -> Figure | None:
    """Bars of ``family``@K (recall or ndcg) per system, one panel per K, or None if no system reports it."""
    systems = _systems(report)
    names = _cutoff_metrics(systems, family)
    if not names:
        return None
    panels = []
    for name in names:
        present = [v for entry in systems.values() if (v := _value(entry, name)) is not None]
        panels.append(Panel(_label(name), 0.0, _axis_end(present or [0.0])))
    rows = [BarRow(str(entry.get("label") or key), color_for(i), tuple(_value(entry, name) for name in names))
            for i, (key, entry) in enumerate(systems.items())]
    title = "%s per system" % ("Recall@K" if family == "recall" else "NDCG@K")
    caption = "%s of the held-out item over the full ranking of %s; each panel has its own axis." % (
        "Recall@K (hit rate)" if family == "recall" else "NDCG@K", _catalog(report))
    return Figure(file_name, to_png(bar_panels(rows, panels, title)), title, caption)


def beyond_accuracy_figure(report: Mapping[str, Any]) -> Figure | None:
    """Coverage, diversity and novelty bars per system (one panel each), or None if no system reports them."""
    systems = _systems(report)
    names = [name for family in BEYOND_FAMILIES for name in _cutoff_metrics(systems, family)[:1]]
    if not names:
        return None
    panels = []
    for name in names:
        present = [v for entry in systems.values() if (v := _value(entry, name)) is not None] or [0.0]
        end = 1.0 if max(present) <= 1.0 else math.ceil(max(present) + 0.5)  # novelty is in bits, the others are shares
        panels.append(Panel(_label(name), 0.0, end))
    rows = [BarRow(str(entry.get("label") or key), color_for(i), tuple(_value(entry, name) for name in names))
            for i, (key, entry) in enumerate(systems.items())]
    caption = ("Beyond accuracy, on each system's top-%s lists: coverage = share of the catalog recommended to anyone; "
               "diversity = mean pairwise cosine distance of a list's item text vectors; novelty = mean self-information "
               "(bits) of the recommended items. Higher is not better by itself: random lists would top all three."
               % report.get("beyond_accuracy_k", 10))
    return Figure(BEYOND_CHART, to_png(bar_panels(rows, panels, "Coverage, diversity and novelty")), "Beyond-accuracy bars", caption)


def _catalog(report: Mapping[str, Any]) -> str:
    n_items = report.get("n_items")
    return "all %s catalog items" % fmt_count(n_items) if isinstance(n_items, numbers.Real) else "all catalog items"


def exclusion_line(report: Mapping[str, Any]) -> str:
    """The sentence saying whether each user's history items were excluded from their list."""
    if "exclude_history" not in report:
        raise ValueError("report is missing 'exclude_history' (whether history items were excluded)")
    if report["exclude_history"]:
        return "History items were excluded: no user is recommended an item already in their history."
    return "History items were not excluded: a user's own history items stay in the ranking (nothing excluded)."


def _conventions(report: Mapping[str, Any]) -> Paragraph:
    k = report.get("beyond_accuracy_k", 10)
    depths = {entry.get("depth") for entry in _systems(report).values()}
    depth = " (lists of %s)" % fmt_count(depths.pop()) if len(depths) == 1 and None not in depths else ""
    text = (
        "One held-out target per user, ranked against %s. Recall@K is 1 when the target is in the top K; "
        "NDCG@K is 1/log2(rank + 2) with the 0-based rank of the target (ideal DCG 1); MRR is 1/(rank + 1) within "
        "each system's list%s, 0 when absent. On top-%s lists: coverage is the share of the catalog recommended to "
        "anyone; diversity is the mean pairwise cosine distance (1 - cos) of a list's item text vectors, averaged "
        "over users; novelty is the mean -log2 p(item) of recommended items with %s. Intervals: paired bootstrap "
        "over users of the difference (system - versus); the verdict is better or worse only when the 95%% interval "
        "excludes 0." % (
            _catalog(report), depth, k, report.get("novelty_smoothing") or "add-one smoothed training popularity"))
    return Paragraph(((text, ""),), note=True)


def _per_user(report: Mapping[str, Any], extras: RunExtras) -> list[Block]:
    systems = _systems(report)
    model, reference = report.get("model"), report.get("reference")
    keys = [k for k in (model, reference) if k in systems]
    if not keys:
        return []
    metric = next((m for m in ("ndcg@50", "ndcg@10", "mrr") if "%s/%s" % (keys[0], m) in extras.per_query), None)
    if metric is None:
        return []
    about = ("Where the model wins and loses: per-user %s (one held-out target each) of the model and of %s." % (
        _label(metric), str(systems[keys[-1]].get("label") or keys[-1])))
    return distribution_section(extras, [(k, str(systems[k].get("label") or k)) for k in keys], metric, "Per-user results", about,
                                PER_USER_CHART, unit="users")


def report_blocks(report: Mapping[str, Any], title: str, notes: Sequence[str], extras: Optional[RunExtras] = None) -> list[Block]:
    """The whole report in reading order; ``extras`` adds the per-user chart and training curves."""
    extras = extras or RunExtras()
    systems = _systems(report)
    meta = "%s users; full ranking over %s; %d systems." % (fmt_count(report.get("n_users")), _catalog(report), len(systems))
    blocks: list[Block] = [
        Heading(title, level=1),
        Paragraph(((meta, ""),), note=True),
        Paragraph(((exclusion_line(report), "strong"),)),
    ]
    blocks += _headline(report)
    blocks += [
        Heading("Results"),
        TableBlock(metrics_table(report), "Bold: best value of an accuracy column."),
    ]
    for family, file_name in (("recall", RECALL_CHART), ("ndcg", NDCG_CHART)):
        figure = bars_figure(report, family, file_name)
        blocks += [figure] if figure else []
    beyond = beyond_accuracy_figure(report)
    blocks += [beyond] if beyond else []
    table = interval_table(report)
    if table is not None:
        blocks += [Heading("All paired comparisons"), TableBlock(table, "Verdict from the 95% interval: better or worse only when it excludes 0.")]
    blocks += _seen_cold(report) + _per_user(report, extras) + training_section(extras)
    if notes:
        blocks += [Heading("Notes"), Bullets(tuple(str(n) for n in notes))]
    return blocks + [Heading("Metric conventions"), _conventions(report)]


def report_notes(cfg: Config, metrics: Mapping[str, Any]) -> list[str]:
    """The report's notes on a recommendation run: split, model, epoch selection, cold targets, similar items."""
    rc = cfg.recommendation
    sel = metrics["training"]["selection"]
    notes = [
        "Valid split, full ranking over all %d items; one target per user; user history items %s."
        % (metrics.get("n_items", 0), "excluded" if rc.exclude_history else "NOT excluded (config recommendation.exclude_history)"),
        "Model: %s encoder over items = fusion(frozen BERT text vector, item-id embedding), %d-d, %s softmax, temperature %g."
        % (rc.encoder, rc.dim, rc.softmax, rc.temperature),
        "Epochs chosen on each user's newest training example (never valid): best epoch %d of %d run; %s."
        % (sel["best_epoch"], sel["epochs_run"], "then re-trained on all training examples" if metrics["training"]["refit"] else "no re-training"),
    ]
    sc = metrics.get("seen_cold", {})
    # the numbers per group are in the seen/cold table, which shows how few the cold targets are
    notes.append("Valid targets never seen in training (cold, reachable through their text only): %d of %d." % (
        sc.get("cold_targets", 0), sc.get("valid_targets", 0)))
    similar = metrics.get("similar_items", {})
    if "item tower" in similar:
        notes.append("Similar items (item tower, %s index): the valid target is among the 10 items most similar to the user's newest "
                     "history item for %.3f of users (zero-shot text similarity: %s)." % (
                         cfg.retrieval.index, similar["item tower"]["recall@10"],
                         "%.3f" % similar["zero-shot text"]["recall@10"] if "zero-shot text" in similar else "n/a"))
        for sample in similar.get("samples", [])[:3]:
            notes.append("Similar to '%s': %s" % (data_text(sample["item"]), "; ".join(data_text(t) for t in sample["similar"][:3])))
    if cfg.data.dataset == "amazon-scientific":
        notes.append("Published context (test split of a larger 8,442-user cut, so a rough guide only): UniSRec recall@10 about "
                     "0.119, MISSRec 0.128 (../shared/datasets/README.md).")
    return notes


def write_recommendation_report(run_dir: Path, report: dict, title: str, notes: list[str],
                                extras: Optional[RunExtras] = None) -> tuple[Path, Path, list[Path]]:
    """Write report.md, its PNG charts and a self-contained report.html into ``run_dir``; returns (md, html, charts)."""
    return write_report(Path(run_dir), title, report_blocks(report, title, notes, extras), CHARTS)


def summary_table(metrics: Mapping[str, Any]) -> str:
    """A fixed-width table of a recommendation run's systems (what `tfrec evaluate` prints)."""
    ks = metrics.get("ks", [10])
    columns = ["recall@%d" % k for k in ks] + ["ndcg@%d" % k for k in ks] + ["mrr", "coverage@10", "diversity@10", "novelty@10"]
    lines = ["%s split, %d users, %d items, history items %s" % (
        metrics.get("split", "valid"), metrics["n_users"], metrics["n_items"], "excluded" if metrics["exclude_history"] else "not excluded"),
        "%-34s" % "system" + "".join("%13s" % c for c in columns)]
    for name, system in metrics["systems"].items():
        lines.append("%-34s" % str(system.get("label", name))[:34] + "".join(
            "%13.4f" % system[c] if isinstance(system.get(c), (int, float)) else "%13s" % "-" for c in columns))
    headline = headline_lines(recommendation_headline(metrics), unit="users")
    return "\n".join(lines + ([""] + headline if headline else []))
