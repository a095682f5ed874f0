"""Self-contained SVG charts: a recall@K curve on a log-K axis and side-by-side horizontal bar panels."""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

# Okabe-Ito colour-blind-safe colours first (yellow left out: unreadable on white), then Paul Tol's muted set.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000",
           "#882255", "#999933", "#44AA99", "#AA4499", "#661100")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
INK, MUTED, GRID, AXIS = "#1f2328", "#59636e", "#e4e7eb", "#8c959f"
MAX_LABEL_CHARS = 44


@dataclass(frozen=True)
class Line:
    """One series of a line chart."""

    label: str
    color: str
    dashed: bool
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class BarRow:
    """One system's row in the bar chart: a value (or None) per panel."""

    label: str
    color: str
    values: tuple[float | None, ...]


@dataclass(frozen=True)
class Panel:
    """One bar panel: its title, value axis range and the metric name used in tooltips."""

    title: str
    metric: str
    start: float
    end: float


def color_for(index: int) -> str:
    """The palette colour of the ``index``-th system (cycles after twelve)."""
    return PALETTE[index % len(PALETTE)]


def _text_width(text: str, size: float) -> float:
    return len(text) * size * 0.55  # average glyph width of a sans-serif font


def _short(text: str) -> str:
    if len(text) <= MAX_LABEL_CHARS:
        return text
    tail = MAX_LABEL_CHARS // 3  # labels often differ at the end ("... v2"), so keep both ends
    return text[: MAX_LABEL_CHARS - tail - 1] + "…" + text[-tail:]


def _num(value: float) -> str:
    return ("%.1f" % value).rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, size: int = 12, anchor: str = "start", fill: str = INK, extra: str = "") -> str:
    return '<text x="%s" y="%s" font-size="%d" text-anchor="%s" fill="%s"%s>%s</text>' % (
        _num(x), _num(y), size, anchor, fill, extra, escape(text))


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    return '<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"%s/>' % (_num(x1), _num(y1), _num(x2), _num(y2), stroke, extra)


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    head = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" '
            'font-family="%s"><title>%s</title><rect width="100%%" height="100%%" fill="#ffffff"/>'
            % (math.ceil(width), math.ceil(height), math.ceil(width), math.ceil(height), escape(FONT), escape(title)))
    return "\n".join([head] + body + ["</svg>"])


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    i = first
    while i * step <= hi + 1e-9:
        ticks.append(round(i * step, 10))
        i += 1
    return ticks


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    step = round(ticks[1] - ticks[0], 10) if len(ticks) > 1 else 1.0
    decimals = len(("%.10g" % step).partition(".")[2])  # as many as the step needs: 0.025 -> 3
    return "%.*f" % (max(1, decimals), value)


def recall_curve(lines: Sequence[Line], title: str, x_label: str, y_label: str) -> str:
    """Lines over a log-scaled x axis with a tick at every x present, 0..1 y axis, grid and legend."""
    xs = sorted({x for line in lines for x, _ in line.points})
    if not xs:
        raise ValueError("recall_curve needs at least one point, got lines %r" % (list(lines),))
    left, top, plot_w, plot_h, bottom = 64.0, 48.0, 460.0, 280.0, 58.0
    lo, hi = math.log10(xs[0]), math.log10(xs[-1])
    pad = max(0.06 * (hi - lo), 0.2)
    lo, hi = lo - pad, hi + pad
    y_max = max([1.0] + [y for line in lines for _, y in line.points])

    def px(x: float) -> float:
        return left + (math.log10(x) - lo) / (hi - lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - y / y_max * plot_h

    labels = [_short(line.label) for line in lines]
    legend_x = left + plot_w + 28
    legend_w = 34 + max(_text_width(label, 12) for label in labels)
    height = top + max(plot_h, 22.0 * len(lines)) + bottom
    body = [_text(16, 24, title, size=15, extra=' font-weight="600"')]
    y_ticks = nice_ticks(0.0, y_max)
    for tick in y_ticks:
        body.append(_line(left, py(tick), left + plot_w, py(tick), GRID))
        body.append(_text(left - 8, py(tick) + 4, _tick_label(tick, y_ticks), size=11, anchor="end", fill=MUTED))
    for x in xs:
        body.append(_line(px(x), top, px(x), top + plot_h, GRID))
        body.append(_text(px(x), top + plot_h + 18, "{:,}".format(int(x)) if float(x).is_integer() else _num(x), size=11, anchor="middle", fill=MUTED))
    body.append('<polyline points="%s,%s %s,%s %s,%s" fill="none" stroke="%s"/>' % (
        _num(left), _num(top), _num(left), _num(top + plot_h), _num(left + plot_w), _num(top + plot_h), AXIS))
    body.append(_text(left + plot_w / 2, top + plot_h + 42, x_label, anchor="middle", fill=INK))
    body.append(_text(18, top + plot_h / 2, y_label, anchor="middle", extra=' transform="rotate(-90 18 %s)"' % _num(top + plot_h / 2)))
    for row, (line, label) in enumerate(zip(lines, labels)):
        dash = ' stroke-dasharray="7 4"' if line.dashed else ""
        width = "2" if line.dashed else "2.75"
        points = sorted(line.points)
        body.append('<g><title>%s</title>' % escape(line.label))
        body.append('<polyline class="series" points="%s" fill="none" stroke="%s" stroke-width="%s" stroke-linejoin="round"%s/>' % (
            " ".join("%s,%s" % (_num(px(x)), _num(py(y))) for x, y in points), line.color, width, dash))
        for x, y in points:
            body.append('<circle cx="%s" cy="%s" r="3.5" fill="%s"><title>%s: Recall@%s = %.3f</title></circle>' % (
                _num(px(x)), _num(py(y)), line.color, escape(line.label), "{:,g}".format(x), y))
        body.append("</g>")
        ly = top + 8 + row * 22
        body.append(_line(legend_x, ly, legend_x + 24, ly, line.color, ' stroke-width="%s"%s' % (width, dash)))
        body.append(_text(legend_x + 32, ly + 4, label))
    return _svg(legend_x + legend_w + 12, height, title, body)


def axis_start_near(values: Sequence[float], floor_step: float = 0.01, margin: float = 0.03) -> float:
    """A round axis start a little below the smallest value, so small differences near the top show."""
    low = min(values) - max(margin, 0.1 * (max(values) - min(values)))
    return max(0.0, math.floor(low / floor_step) * floor_step)


def paired_bars(rows: Sequence[BarRow], panels: Sequence[Panel], title: str) -> str:
    """Horizontal bars, one row per system and one panel per metric, each panel with its own axis."""
    if not rows or not panels:
        raise ValueError("paired_bars needs rows and panels, got %d rows and %d panels" % (len(rows), len(panels)))
    labels = [_short(row.label) for row in rows]
    label_w = max(_text_width(label, 12) for label in labels) + 24
    panel_w, gap, row_h, bar_h, top, bottom = 300.0, 40.0, 28.0, 16.0, 72.0, 36.0
    plot_w = panel_w - 48  # room on the right for the value label
    width = label_w + len(panels) * panel_w + (len(panels) - 1) * gap + 12
    height = top + row_h * len(rows) + bottom
    body = [_text(16, 24, title, size=15, extra=' font-weight="600"')]
    for i, label in enumerate(labels):
        if i % 2:
            body.append('<rect x="8" y="%s" width="%s" height="%s" fill="#f6f8fa"/>' % (_num(top + i * row_h), _num(width - 16), _num(row_h)))
        body.append(_text(label_w - 12, top + i * row_h + row_h / 2 + 4, label, anchor="end"))
    for p, panel in enumerate(panels):
        x0 = label_w + p * (panel_w + gap)

        def px(value: float, panel: Panel = panel, x0: float = x0) -> float:
            clipped = min(max(value, panel.start), panel.end)
            return x0 + (clipped - panel.start) / (panel.end - panel.start) * plot_w

        body.append(_text(x0, top - 16, panel.title, size=12, extra=' font-weight="600"'))
        ticks = nice_ticks(panel.start, panel.end)
        for tick in ticks:
            body.append(_line(px(tick), top - 4, px(tick), top + row_h * len(rows), GRID))
            body.append(_text(px(tick), top + row_h * len(rows) + 16, _tick_label(tick, ticks), size=11, anchor="middle", fill=MUTED))
        body.append(_line(x0, top - 4, x0, top + row_h * len(rows), AXIS))
        for i, row in enumerate(rows):
            value = row.values[p]
            y = top + i * row_h + (row_h - bar_h) / 2
            if value is None:
                body.append(_text(x0 + 6, y + bar_h - 3, "not reported", size=11, fill=MUTED))
                continue
            body.append('<rect class="bar" x="%s" y="%s" width="%s" height="%s" fill="%s" rx="2"><title>%s: %s = %.3f</title></rect>' % (
                _num(x0), _num(y), _num(px(value) - x0), _num(bar_h), row.color, escape(row.label), escape(panel.metric), value))
            body.append(_text(px(value) + 5, y + bar_h - 3, "%.3f" % value, size=11))
    return _svg(width, height, title, body)
