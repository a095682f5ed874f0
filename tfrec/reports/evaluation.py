"""`tfrec evaluate`: a run's report.html (self-contained) and PNG charts, rebuilt from what the run saved.

Nothing is retrained or re-scored: the report reads what :class:`tfrec.runs.RunFolder` names:
``metrics.json``, ``per_query.npz`` (per-query and per-user metrics), ``top_results.json`` (a search
run's final top results) and the TensorBoard logs under ``tensorboard/``. ``tfrec.api.train`` ends
by calling :func:`evaluate_run`, so a fresh run's report and a later ``tfrec evaluate`` give the same page.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from tfrec.config import load_config
from tfrec.evaluation.compare import PerQuery
from tfrec.evaluation.results import read_top_results, worst_queries
from tfrec.reports.movielens import write_reports as write_movielens_report
from tfrec.reports.recommend import report_notes, write_recommendation_report
from tfrec.reports.recommend import summary_table as recommendation_summary
from tfrec.reports.search import summary_table, write_search_report
from tfrec.reports.sections import RunExtras
from tfrec.runs import MOVIELENS, RECOMMENDATION, SEARCH, RunFolder
from tfrec.runs import RunIncomplete  # noqa: F401  (raised by read_metrics; callers catch it from here too)

log = logging.getLogger(__name__)

WORST_QUERIES = 8


@dataclass
class EvaluationReport:
    """What :func:`evaluate_run` wrote: the report page, its PNG files, and the run's metrics."""

    run_dir: Path
    metrics: dict
    html: Path
    figures: list[Path] = field(default_factory=list)
    summary: str = ""


def run_kind(metrics: dict, run_dir: Optional[Path] = None) -> str:
    """"search", "recommendation" or "movielens-multitask": the run folder's record, else the shape of its metrics.json."""
    if run_dir is not None:
        try:
            return RunFolder(run_dir).kind()
        except FileNotFoundError:
            pass  # a folder without run.json or settings files (assembled by hand): its metrics tell
    if metrics.get("task") == MOVIELENS:
        return MOVIELENS
    if "n_users" in metrics:
        return RECOMMENDATION
    if "n_queries" in metrics and "systems" in metrics:
        return SEARCH
    raise ValueError("metrics.json has neither search (n_queries, systems) nor recommendation (n_users) results")


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json, with an error that says what to do when it is missing or unreadable."""
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        raise RunIncomplete("run %s has no %s: its `tfrec train` did not finish (run it again with --run-dir %s to resume)"
                                % (run_dir, path.name, run_dir))
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError("%s is not valid JSON (%s); re-run `tfrec train --run-dir %s` to write it again" % (path, err, run_dir)) from err
    if not isinstance(metrics, dict):
        raise ValueError("%s holds %s, not a JSON object" % (path, type(metrics).__name__))
    return metrics


def read_curves(tensorboard_dir: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Scalar series per model from a run's TensorBoard folder: {model: {tag: [(step, value), ...]}}."""
    # tensorboard's event reader pulls in TensorFlow: loaded only when a report reads curves.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for folder in sorted(p for p in Path(tensorboard_dir).iterdir() if p.is_dir()):
        accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
        accumulator.Reload()
        tags: dict[str, list[tuple[float, float]]] = {}
        for tag in accumulator.Tags().get("tensors", []):
            points = []
            for event in accumulator.Tensors(tag):
                value = make_ndarray(event.tensor_proto)
                if value.shape == () and np.issubdtype(value.dtype, np.number):
                    points.append((float(event.step), float(value)))
            if points:
                tags[tag] = sorted(points)
        if tags:
            curves[folder.name] = tags
    return curves


def load_extras(run_dir: Path, metrics: dict) -> RunExtras:
    """Per-query metrics, training curves and (search runs) the worst queries' top results of a run."""
    folder = RunFolder(run_dir)
    extras = RunExtras()
    keys = None
    if folder.per_query.is_file():
        saved = PerQuery.load(folder.per_query)
        keys, extras.per_query = saved.keys, dict(saved.values)
    else:
        extras.missing.append("This run has no %s (runs of older tfrec versions do not save per-query metrics); re-run "
                              "`tfrec train` for the per-query charts." % folder.per_query.name)
    tensorboard = folder.tensorboard
    if tensorboard.is_dir():
        extras.curves = read_curves(tensorboard)
    if not extras.curves:
        extras.missing.append("No TensorBoard logs under %s (train.tensorboard was off, or the run saved none), so no "
                              "training curves." % tensorboard)
    if run_kind(metrics, folder.root) == SEARCH:
        path = folder.top_results
        values = extras.per_query.get("tfrec_search/ndcg@10_e2e")
        if not path.is_file():
            extras.missing.append("This run has no %s (runs of older tfrec versions do not save their top results); re-run "
                                  "`tfrec train` for the gallery of worst queries." % path.name)
        elif keys is not None and values is not None:
            extras.worst = worst_queries(read_top_results(path), keys, values, n=WORST_QUERIES)
    return extras


def _recommendation_notes(run_dir: Path, metrics: dict) -> list[str]:
    path = RunFolder(run_dir).config
    try:
        loaded = load_config(str(path), [])
    except (OSError, ValueError) as err:  # a report without its notes beats no report
        log.warning("could not read %s for the report's notes: %s", path, err)
        return []
    return report_notes(loaded.config, metrics)


def evaluate_run(run_dir: Path) -> EvaluationReport:
    """Write ``report.html``, ``report.md`` and the PNG charts of a trained run; returns where they are."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    kind = run_kind(metrics, run_dir)
    if kind == MOVIELENS:
        md, html = write_movielens_report(metrics, run_dir)
        return EvaluationReport(run_dir, metrics, html, [], md.read_text(encoding="utf-8"))
    extras = load_extras(run_dir, metrics)
    if kind == SEARCH:
        _, html, figures = write_search_report(metrics, run_dir, extras)
        return EvaluationReport(run_dir, metrics, html, figures, summary_table(metrics))
    title = "tfrec recommendation run: %s" % run_dir.name
    _, html, figures = write_recommendation_report(run_dir, metrics, title, _recommendation_notes(run_dir, metrics), extras)
    return EvaluationReport(run_dir, metrics, html, figures, recommendation_summary(metrics))
