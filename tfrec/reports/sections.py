"""Report sections drawn from what a run folder holds beyond metrics.json: per-query metrics,
TensorBoard training logs and the top results of the worst queries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html import unescape
from typing import Optional, Sequence

import numpy as np

from tfrec.evaluation.results import FailedQuery
from tfrec.reports.markup import Block, Card, Figure, Gallery, Heading, Paragraph
from tfrec.reports.plots import per_query_distribution, singular, to_png, training_curves

PER_QUERY_CHART = "per_query.png"
PER_USER_CHART = "per_user.png"
TRAINING_CHART = "training.png"


@dataclass
class RunExtras:
    """What a report shows besides metrics.json; each part empty when the run did not save it (``missing`` says why)."""

    per_query: dict[str, np.ndarray] = field(default_factory=dict)  # "<system>/<metric>" -> [n] (NaN: undefined)
    curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)  # model -> tag -> (step, value)
    worst: list[FailedQuery] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _say(text: str, note: bool = False) -> Paragraph:
    return Paragraph(((text, ""),), note=note)


def distribution_section(extras: RunExtras, systems: Sequence[tuple[str, str]], metric: str, heading: str, about: str,
                         file_name: str, unit: str = "queries") -> list[Block]:
    """A heading, a sentence and the per-query distribution chart of ``metric`` for (key, label) ``systems`` (first = model)."""
    series = {label: extras.per_query["%s/%s" % (key, metric)] for key, label in systems
              if "%s/%s" % (key, metric) in extras.per_query}
    if not series:
        return []
    pretty = metric.replace("_e2e", " (end-to-end)").replace("ndcg", "NDCG").replace("recall", "Recall").replace("mrr", "MRR")
    figure = per_query_distribution(series, pretty, unit=unit)
    values = next(iter(series.values()))
    defined = values[~np.isnan(values)]
    caption = ("Per-%s %s of %s; %d %s have a defined value, %d of them (%.0f%%) score 0." % (
        singular(unit), pretty, list(series)[0], len(defined), unit, int(np.sum(defined == 0)),
        100 * float(np.mean(defined == 0)) if len(defined) else 0.0))
    if len(series) > 1:
        caption += " Right: the paired difference against %s, one bar per %s, sorted." % (list(series)[1], singular(unit))
    return [Heading(heading), _say(about), Figure(file_name, to_png(figure), "Per-%s %s" % (singular(unit), pretty), caption)]


def training_section(extras: RunExtras) -> list[Block]:
    """Training curves from the run's TensorBoard logs, or a line saying why there are none."""
    if not any(any(tags.values()) for tags in extras.curves.values()):
        reason = next((line for line in extras.missing if "TensorBoard" in line), "")
        return [Heading("Training curves"), _say(reason, note=True)] if reason else []
    figure = training_curves(extras.curves)
    caption = ("Training loss per logged step (line) and per epoch (dots) for each model the run trained; squares: the "
               "metric on the held-out part of the training data used for early stopping (never the valid split).")
    return [Heading("Training curves"), Figure(TRAINING_CHART, to_png(figure), "Training curves", caption)]


def _label(value: Optional[float]) -> str:
    return "unjudged" if value is None else "relevance %.2f" % value


def data_text(text: str) -> str:
    """Text from the user's data as it should read: HTML entities in the data ("Kitchen &amp; Bath") decoded once.

    The renderers escape everything they write, so decoding here (and nowhere else) shows each entity exactly once.
    """
    return unescape(str(text))


def _product(pid: str, title: str, label: Optional[float]) -> str:
    return "%s — %s" % (data_text(title) if title else pid, _label(label))


def gallery_section(worst: Sequence[FailedQuery], metric: str, system_label: str, missing: Sequence[str] = ()) -> list[Block]:
    """Cards of the worst queries: what the system returned (with judged labels) and the best judged products it missed."""
    if not worst:
        reason = next((line for line in missing if "top_results" in line), "")
        return [Heading("Worst queries"), _say(reason, note=True)] if reason else []
    cards = []
    for item in worst:
        lists = [("Returned (top %d)" % len(item.top), tuple(_product(*entry) for entry in item.top))]
        if item.missed:
            lists.append(("Judged but not in its top results", tuple(_product(*entry) for entry in item.missed)))
        cards.append(Card('"%s"' % data_text(item.query), "%s %.3f; %d judged products, %d relevant" % (metric, item.value, item.n_judged, item.n_positive),
                          tuple(lists)))
    about = ("The %d valid queries where %s scores lowest on %s (ties: most relevant judged products first), with what it "
             "returned and the best-judged products it did not return. Unjudged results count as gain 0, so some of them "
             "may be fine products nobody rated." % (len(worst), system_label, metric))
    return [Heading("Worst queries"), _say(about), Gallery(tuple(cards))]

