"""Server-rendered SVG charts: stacked bars and lines. Pure functions that
return ``markupsafe.Markup`` (every label is escaped), sized by a viewBox so
they scale to the width of their container (phone or desktop)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Series", "stacked_bars", "lines", "nice_max"]

WIDTH, HEIGHT = 600, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 10, 12, 34


@dataclass(frozen=True, slots=True)
class Series:
    """One named series: ``values[i]`` belongs to the i-th label; ``css`` is
    the class that colours it (see ``static/voxgate.css``)."""

    name: str
    values: Sequence[float]
    css: str


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10ⁿ that is ≥ ``value`` (≥ 1)."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)


def _frame(title: str, labels: Sequence[str], top: float, unit: str) -> list[str]:
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">',
           f"<title>{escape(title)}</title>"]
    for i in range(5):
        value = top * i / 4
        y = PAD_TOP + plot_h - plot_h * i / 4
        text = f"{value:g}" if value < 1000 else f"{value / 1000:g}k"
        out.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" '
                   f'y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{PAD_LEFT - 4}" y="{y + 3:.1f}" '
                   f'text-anchor="end">{escape(text)}</text>')
    n = max(1, len(labels))
    step = (WIDTH - PAD_LEFT - PAD_RIGHT) / n
    every = max(1, round(n / 8))
    for i, label in enumerate(labels):
        if i % every == 0:
            x = PAD_LEFT + step * (i + 0.5)
            out.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - PAD_BOTTOM + 14}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    if unit:
        out.append(f'<text class="axis" x="{PAD_LEFT}" y="{HEIGHT - 4}">{escape(unit)}</text>')
    return out


def _legend(series: Sequence[Series]) -> str:
    x = WIDTH - PAD_RIGHT
    parts = []
    for s in reversed(series):
        width = 14 + 7 * len(s.name)
        x -= width + 8
        parts.append(f'<rect class="{escape(s.css)}" x="{x}" y="{HEIGHT - 13}" width="10" '
                     f'height="10"/><text class="axis" x="{x + 14}" y="{HEIGHT - 4}">'
                     f"{escape(s.name)}</text>")
    return "".join(parts)


def stacked_bars(title: str, labels: Sequence[str], series: Sequence[Series],
                 unit: str = "") -> Markup:
    """One bar per label, the series stacked bottom-up in order."""
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = nice_max(max(totals, default=0))
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = (WIDTH - PAD_LEFT - PAD_RIGHT) / max(1, len(labels))
    bar_w = max(1.0, step * 0.7)
    out = _frame(title, labels, top, unit)
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
    out.append(_legend(series))
    out.append("</svg>")
    return Markup("".join(out))


def lines(title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "") -> Markup:
    """One polyline per series over the labels (missing tail values of a
    shorter series are simply not drawn)."""
    top = nice_max(max((v for s in series for v in s.values), default=0))
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    step = (WIDTH - PAD_LEFT - PAD_RIGHT) / max(1, len(labels))
    out = _frame(title, labels, top, unit)
    for s in series:
        points = " ".join(
            f"{PAD_LEFT + step * (i + 0.5):.1f},{PAD_TOP + plot_h - plot_h * v / top:.1f}"
            for i, v in enumerate(s.values))
        if points:
            out.append(f'<polyline class="{escape(s.css)}" fill="none" points="{points}">'
                       f"<title>{escape(s.name)}</title></polyline>")
    out.append(_legend(series))
    out.append("</svg>")
    return Markup("".join(out))
