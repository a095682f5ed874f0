"""The MovieLens multi-task run's report, rendered from its metrics.json.

One table of test metrics per (mixture, weighting), as Markdown and HTML.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from tfrec.reports.markup import Block, Bullets, Heading, KeyValues, Paragraph, TableBlock, write_report
from tfrec.reports.tables import Cell, Table, fmt3, fmt_count, fmt_duration, fmt_value

TITLE = "MovieLens 100K: multi-task rating + retrieval"
SWEEP_KS = (10, 50, 100)


def _weighting(run: Mapping[str, Any]) -> str:
    return "%g / %g" % (run["rating_weight"], run["retrieval_weight"])


def sweep_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    """One row per trained variant: test RMSE and top-K accuracy (best of each column in bold), epochs and speed."""
    best_rmse = min(round(r["test"]["rating_rmse"], 3) for r in runs)
    best_top = {k: max(round(r["test"]["top_%d_accuracy" % k], 3) for r in runs) for k in SWEEP_KS}
    rows = []
    for run in runs:
        test = run["test"]
        cells = [Cell(run["mixture"] + (" (configured)" if run.get("configured") else "")), Cell(_weighting(run)),
                 Cell(fmt3(test["rating_rmse"]), numeric=True, bold=round(test["rating_rmse"], 3) == best_rmse)]
        for k in SWEEP_KS:
            value = test["top_%d_accuracy" % k]
            cells.append(Cell(fmt3(value), numeric=True, bold=round(value, 3) == best_top[k]))
        cells += [Cell(fmt_value(run["best_epoch"]), numeric=True), Cell(fmt_count(run["train_examples_per_s"]), numeric=True)]
        rows.append(tuple(cells))
    header = ("Mixture", "Weights (rating / retrieval)", "Test RMSE") + tuple("Top-%d acc." % k for k in SWEEP_KS) + (
        "Best epoch", "Train examples/s")
    return Table(header, tuple(rows))


def report_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    """The report's blocks: what was run, the sweep table, how numbers were obtained."""
    split = metrics["split"]
    settings = metrics["settings"]
    blocks: list[Block] = [
        Heading(TITLE, 1),
        Paragraph((("Test pairs: ", ""), (fmt_count(split["test"]), "strong"),
                   ("; trained on %s pairs, %s held out for early stopping (seed %s); the whole run took %s."
                    % (fmt_count(split["fit"]), fmt_count(split["holdout"]), split["holdout_seed"], fmt_duration(metrics["seconds"])), ""))),
        Heading("Test metrics per mixture and loss weighting"),
        TableBlock(sweep_table(metrics["runs"]),
                   note="Rating RMSE and retrieval top-K accuracy on the same test pairs (the TFRS multitask tutorial's table). "
                        "A weight of 0 leaves that task's head untrained, so its metric shows an untrained head."),
        Heading("How the numbers were obtained"),
        Bullets((metrics["split"]["procedure"], metrics["evaluation"], metrics["selection"],
                 "Movie side: %s fused with a title-id embedding; user side: a user-id embedding%s."
                 % (metrics["text_features"], " and the mean text vector of the user's other training movies"
                    if settings["user_history"] else ""))),
        Heading("Settings", 3),
        KeyValues(tuple((key, fmt_value(value)) for key, value in settings.items())),
    ]
    return blocks


def write_reports(metrics: Mapping[str, Any], run_dir: Path) -> list[Path]:
    """Write report.md and report.html into ``run_dir`` (the report has no charts); return their paths."""
    md_path, html_path, _ = write_report(Path(run_dir), TITLE, report_blocks(metrics), ())
    return [md_path, html_path]
