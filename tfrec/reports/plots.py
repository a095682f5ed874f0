"""The report's charts, drawn with matplotlib (Agg: no display, no server) and saved as PNG.

Each chart function returns a matplotlib ``Figure`` (tests read its artists); :func:`to_png`
renders and closes it. Figures are created with ``matplotlib.figure.Figure`` directly, not
``pyplot``, so drawing a report never touches pyplot's global figure registry or backend.
"""
from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

# Okabe-Ito colour-blind-safe colours first (yellow left out: unreadable on white), then Paul Tol's muted set.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000",
           "#882255", "#999933", "#44AA99", "#AA4499", "#661100")
INK, MUTED, GRID = "#1f2328", "#59636e", "#e4e7eb"
LEGEND_WIDTH = 40  # characters per line of a wrapped legend label
BAR_LABEL_WIDTH = 28  # characters per line of a wrapped bar label
MAX_LABEL_LINES = 3
DPI = 110


@dataclass(frozen=True)
class Line:
    """One series of a line chart."""

    label: str
    color: str
    dashed: bool
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class BarRow:
    """One system's row in a bar chart: a value (or None) per panel."""

    label: str
    color: str
    values: tuple[Optional[float], ...]


@dataclass(frozen=True)
class Panel:
    """One bar panel: its title and value-axis range."""

    title: str
    start: float
    end: float


def color_for(index: int) -> str:
    """The palette colour of the ``index``-th system (cycles after twelve)."""
    return PALETTE[index % len(PALETTE)]


def wrap_label(text: str, width: int = LEGEND_WIDTH, max_lines: int = MAX_LABEL_LINES) -> str:
    """``text`` wrapped at word boundaries into lines of about ``width`` characters (words are never cut);
    beyond ``max_lines`` the last line ends in "…"."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    return textwrap.fill(text, width=width, max_lines=max_lines, placeholder=" …", break_long_words=False, break_on_hyphens=False)


def axis_start_near(values: Sequence[float], floor_step: float = 0.01, margin: float = 0.03) -> float:
    """A round axis start a little below the smallest value, so small differences near the top show."""
    low = min(values) - max(margin, 0.1 * (max(values) - min(values)))
    return max(0.0, math.floor(low / floor_step) * floor_step)


def singular(unit: str) -> str:
    """"queries" -> "query", "users" -> "user"."""
    return unit[:-3] + "y" if unit.endswith("ies") else unit.rstrip("s")


def smooth(values: Sequence[float], weight: float = 0.8) -> np.ndarray:
    """TensorBoard-style exponential moving average, bias-corrected so the start is not pulled to 0."""
    out, average = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * float(value)
        out[i] = average / (1 - weight ** (i + 1))
    return out


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.patch.set_facecolor("white")
    return fig


def _style(ax) -> None:
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=9)


def to_png(fig: Figure) -> bytes:
    """The figure rendered as PNG bytes (the figure is released afterwards)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    fig.clear()
    return buffer.getvalue()


def recall_curves(lines: Sequence[Line], title: str, xlabel: str = "K (cut-off, log scale)", ylabel: str = "Recall@K") -> Figure:
    """Recall@K against K on a log axis, one line per system, a gridline at every K evaluated."""
    if not lines:
        raise ValueError("recall_curves needs at least one line")
    fig = _figure(8.6, 4.6)
    ax = fig.add_subplot()
    ks = sorted({k for line in lines for k, _ in line.points})
    for line in lines:
        xs, ys = zip(*line.points)
        ax.plot(xs, ys, color=line.color, linestyle="--" if line.dashed else "-", marker="o", markersize=4,
                linewidth=1.6 if line.dashed else 2.2, label=wrap_label(line.label))
    if len(ks) > 1:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(["%g" % k for k in ks])
    top = max(y for line in lines for _, y in line.points)
    ax.set_ylim(0, 1.0 if top > 0.5 else max(0.1, math.ceil(top * 10 + 1e-9) / 10))
    ax.set_xlabel(xlabel, color=INK)
    ax.set_ylabel(ylabel, color=INK)
    ax.set_title(title, color=INK, fontsize=12, loc="left")
    _style(ax)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig


def bar_panels(rows: Sequence[BarRow], panels: Sequence[Panel], title: str) -> Figure:
    """Horizontal bars, one panel per metric (each with its own axis); a missing value is written "n/a"."""
    if not rows or not panels:
        raise ValueError("bar_panels needs at least one row and one panel")
    if any(len(row.values) != len(panels) for row in rows):
        raise ValueError("every row needs one value per panel (%d)" % len(panels))
    labels = [wrap_label(row.label, BAR_LABEL_WIDTH) for row in rows]
    height = 1.0 + sum(max(0.34, 0.17 * (label.count("\n") + 1)) for label in labels)
    fig = _figure(min(4.2 * len(panels) + 3.2, 13.0), max(2.4, height))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    # first system on top; a row is as tall as its wrapped label
    spans = np.array([max(1.0, 0.5 * (label.count("\n") + 1)) for label in labels])
    positions = spans.sum() - (np.cumsum(spans) - spans / 2)
    for p, (ax, panel) in enumerate(zip(axes, panels)):
        values = [row.values[p] for row in rows]
        ax.barh(positions, [v if v is not None else 0.0 for v in values], left=0.0, color=[row.color for row in rows],
                height=0.7)
        span = panel.end - panel.start
        for y, value in zip(positions, values):
            text = "n/a" if value is None else "%.3f" % value
            x = panel.start + 0.01 * span if value is None else min(value, panel.end) + 0.01 * span
            ax.text(x, y, text, va="center", ha="left", fontsize=8, color=MUTED if value is None else INK)
        ax.set_xlim(panel.start, panel.end + 0.14 * span)  # room for the value labels
        ax.set_ylim(0.0, float(spans.sum()))
        ax.set_title(panel.title, color=INK, fontsize=10, loc="left")
        _style(ax)
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(labels, fontsize=8, color=INK)
    fig.suptitle(title, color=INK, fontsize=12, x=0.01, ha="left")
    return fig


def per_query_distribution(series: Mapping[str, np.ndarray], metric: str, unit: str = "queries") -> Figure:
    """Left: each system's histogram of a per-query metric; right: the first system minus the second, per query, sorted.

    The right panel is the "which queries fail" view: the share of queries where the model is
    worse than the baseline, the same, or better, with how much.
    """
    cleaned = {label: np.asarray(v, dtype=np.float64)[~np.isnan(np.asarray(v, dtype=np.float64))] for label, v in series.items()}
    cleaned = {label: v for label, v in cleaned.items() if len(v)}
    if not cleaned:
        raise ValueError("per_query_distribution needs at least one series with values")
    labels = list(cleaned)
    paired = len(labels) >= 2
    fig = _figure(11.5 if paired else 6.4, 4.0)
    axes = fig.subplots(1, 2 if paired else 1, squeeze=False)[0]
    ax = axes[0]
    high = max(1.0, max(float(v.max()) for v in cleaned.values()))
    bins = np.linspace(0.0, high, 21)
    for i, label in enumerate(labels):
        values = cleaned[label]
        ax.hist(values, bins=bins, histtype="step", linewidth=2.0, color=color_for(i),
                label="%s (mean %.3f, %.0f%% at 0)" % (wrap_label(label, 34), values.mean(), 100 * np.mean(values == 0)))
    ax.set_xlabel(metric, color=INK)
    ax.set_ylabel(unit, color=INK)
    ax.set_title("Distribution of per-%s %s" % (singular(unit), metric), color=INK, fontsize=11, loc="left")
    ax.legend(fontsize=8, frameon=False, loc="upper center")
    _style(ax)
    if paired:
        a, b = (np.asarray(series[label], dtype=np.float64) for label in labels[:2])
        both = ~(np.isnan(a) | np.isnan(b))
        diff = np.sort(a[both] - b[both])
        ax = axes[1]
        x = np.arange(len(diff))
        colors = np.where(diff < 0, PALETTE[4], np.where(diff > 0, PALETTE[2], MUTED))
        ax.bar(x, diff, width=1.0, color=colors, linewidth=0)
        ax.axhline(0.0, color=INK, linewidth=0.8)
        worse, better = float(np.mean(diff < 0)), float(np.mean(diff > 0))
        ax.set_title("Paired difference per %s, sorted:\n%s\n− %s" % (singular(unit), wrap_label(labels[0], 60, 1), wrap_label(labels[1], 60, 1)),
                     color=INK, fontsize=10, loc="left")
        ax.set_xlabel("%s: %.0f%% worse, %.0f%% equal, %.0f%% better" % (unit, 100 * worse, 100 * (1 - worse - better), 100 * better),
                      color=INK)
        ax.set_ylabel("difference in %s" % metric, color=INK)
        ax.set_xlim(-0.5, max(len(diff) - 0.5, 0.5))
        _style(ax)
    return fig


def training_curves(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]) -> Figure:
    """One panel per trained model: its training loss by step, and any validation metrics on a second axis."""
    # the first-stage model first, then the rest by name
    models = sorted((name for name, tags in curves.items() if any(tags.values())), key=lambda n: (not n.startswith("retrieval"), n))
    if not models:
        raise ValueError("training_curves needs at least one model with logged values")
    columns = min(3, len(models))
    rows_n = math.ceil(len(models) / columns)
    fig = _figure(4.3 * columns + 0.6, 3.1 * rows_n + 0.4)
    axes = fig.subplots(rows_n, columns, squeeze=False).ravel()
    for ax, name in zip(axes, models):
        tags = curves[name]
        loss = tags.get("train/loss") or tags.get("epoch/loss") or []
        if loss:
            steps, values = zip(*loss)
            ax.plot(steps, values, color=PALETTE[0], linewidth=0.8, alpha=0.35)
            ax.plot(steps, smooth(values), color=PALETTE[0], linewidth=1.8, label="training loss (smoothed)")
        epoch = tags.get("epoch/loss") or []
        if epoch and tags.get("train/loss"):
            steps, values = zip(*epoch)
            ax.plot(steps, values, color=PALETTE[0], linestyle="none", marker="o", markersize=4, label="epoch mean loss")
        ax.set_xlabel("step", color=INK)
        ax.set_ylabel("loss", color=INK)
        ax.set_title(name, color=INK, fontsize=10, loc="left")
        _style(ax)
        handles, labels = ax.get_legend_handles_labels()
        validation = sorted(tag for tag in tags if tag.startswith("val/") and tags[tag])
        if validation:
            twin = ax.twinx()
            for i, tag in enumerate(validation[:3]):
                steps, values = zip(*tags[tag])
                twin.plot(steps, values, color=color_for(i + 1), marker="s", markersize=4, linewidth=1.4,
                          label="holdout %s" % tag[4:])
            twin.set_ylabel("holdout metric", color=INK)
            twin.tick_params(colors=MUTED, labelsize=9)
            more_handles, more_labels = twin.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.legend(handles, labels, fontsize=7, framealpha=0.85, loc="best")
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.suptitle("Training curves (from the run's TensorBoard logs)", color=INK, fontsize=12, x=0.01, ha="left")
    return fig
