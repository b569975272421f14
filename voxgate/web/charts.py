"""Server-rendered SVG charts: stacked bars and lines. Pure functions that
return ``markupsafe.Markup`` (every label is escaped), sized by a viewBox so
they scale to the width of their container (phone or desktop)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Series", "stacked_bars", "lines", "nice_max", "WIDTH", "WIDE", "DOT_R"]

WIDTH, HEIGHT = 600, 220
WIDE = 1000  # a chart alone on its row
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 10, 12, 34
DOT_R = 3  # radius of a line chart's dots, in viewBox units


@dataclass(frozen=True, slots=True)
class Series:
    """One named series: ``values[i]`` belongs to the i-th label; ``css`` is
    the class that colours it (see ``static/voxgate.css``)."""

    name: str
    values: Sequence[float]
    css: str


def _nice(value: float, steps: tuple[float, ...]) -> float:
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in steps:
        if step * magnitude >= value * (1 - 1e-9):
            return step * magnitude
    return 10 * magnitude


def nice_max(value: float, integer: bool = False) -> float:
    """The top of a value axis with four divisions: the smallest of
    1, 2, 2.5, 5 × 10ⁿ that is ≥ ``value`` (1 when there is nothing), or
    with ``integer`` a multiple of 4 (4, 8, 20, 40, 80, 200, …) so every
    tick is a whole number."""
    if value <= 0:
        return 4.0 if integer else 1.0
    if integer:
        return 4 * _nice(max(1.0, value / 4), (1, 2, 5, 10))
    return _nice(value, (1, 2, 2.5, 5, 10))


def _frame(title: str, labels: Sequence[str], top: float, unit: str, width: int,
           bottom: float = 0.0) -> list[str]:
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    out = [f'<svg class="chart" viewBox="0 0 {width} {HEIGHT}" role="img" '
           f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">',
           f"<title>{escape(title)}</title>"]
    for i in range(5):
        value = bottom + (top - bottom) * i / 4
        y = PAD_TOP + plot_h - plot_h * i / 4
        text = f"{value:g}" if abs(value) < 1000 else f"{value / 1000:g}k"
        out.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{width - PAD_RIGHT}" '
                   f'y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{PAD_LEFT - 4}" y="{y + 3:.1f}" '
                   f'text-anchor="end">{escape(text)}</text>')
    n = max(1, len(labels))
    step = (width - PAD_LEFT - PAD_RIGHT) / n
    every = max(1, round(n / 8))
    for i, label in enumerate(labels):
        if i % every == 0:
            x = PAD_LEFT + step * (i + 0.5)
            out.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - PAD_BOTTOM + 14}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    if unit:
        out.append(f'<text class="axis" x="{PAD_LEFT}" y="{HEIGHT - 4}">{escape(unit)}</text>')
    return out


def _legend(series: Sequence[Series], width: int) -> str:
    x = width - PAD_RIGHT
    parts = []
    for s in reversed(series):
        width = 14 + 7 * len(s.name)
        x -= width + 8
        parts.append(f'<rect class="{escape(s.css)}" x="{x}" y="{HEIGHT - 13}" width="10" '
                     f'height="10"/><text class="axis" x="{x + 14}" y="{HEIGHT - 4}">'
                     f"{escape(s.name)}</text>")
    return "".join(parts)


def stacked_bars(title: str, labels: Sequence[str], series: Sequence[Series],
                 unit: str = "", *, integer: bool = False, width: int = WIDTH) -> Markup:
    """One bar per label, the series stacked bottom-up in order;
    ``integer``: whole-number ticks (counts)."""
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = nice_max(max(totals, default=0), integer)
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = (width - PAD_LEFT - PAD_RIGHT) / max(1, len(labels))
    bar_w = min(40.0, max(1.0, step * 0.7))
    out = _frame(title, labels, top, unit, width)
    for i, label in enumerate(labels):
        base = 0.0
        x = PAD_LEFT + step * i + (step - bar_w) / 2
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            y = PAD_TOP + plot_h - plot_h * base / top - h
            out.append(f'<rect class="{escape(s.css)}" x="{x:.1f}" y="{y:.1f}" '
                       f'width="{bar_w:.1f}" height="{h:.1f}"><title>{escape(label)} '
                       f"{escape(s.name)}: {value:g}</title></rect>")
            base += value
    out.append(_legend(series, width))
    out.append("</svg>")
    return Markup("".join(out))


def lines(title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "", *,
          integer: bool = False, width: int = WIDTH) -> Markup:
    """One polyline per series over the labels, and a dot (``<circle>``,
    radius ``DOT_R``) on every value, titled ``"<label> <series>: <value>"``,
    so that a series of one value is still seen (missing tail values of a
    shorter series are simply not drawn). Values below 0 (a negative
    margin) extend the axis down symmetrically to the nearest nice value."""
    values = [v for s in series for v in s.values]
    low = min(values, default=0.0)
    top = nice_max(max(values, default=0), integer)
    bottom = 0.0
    if low < 0:  # the axis spans both signs in four equal steps, 0 on a grid line
        span = nice_max(max(top, -low), integer)
        top, bottom = (span, -span)
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = (width - PAD_LEFT - PAD_RIGHT) / max(1, len(labels))
    out = _frame(title, labels, top, unit, width, bottom)
    for s in series:
        xy = [(PAD_LEFT + step * (i + 0.5), PAD_TOP + plot_h * (top - v) / (top - bottom))
              for i, v in enumerate(s.values[:len(labels)])]
        if len(xy) > 1:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            out.append(f'<polyline class="{escape(s.css)}" fill="none" points="{points}">'
                       f"<title>{escape(s.name)}</title></polyline>")
        for (x, y), label, value in zip(xy, labels, s.values, strict=False):
            out.append(f'<circle class="{escape(s.css)} dot" cx="{x:.1f}" cy="{y:.1f}" '
                       f'r="{DOT_R}"><title>{escape(label)} {escape(s.name)}: {value:g}'
                       f"{' ' + escape(unit) if unit else ''}</title></circle>")
    out.append(_legend(series, width))
    out.append("</svg>")
    return Markup("".join(out))
