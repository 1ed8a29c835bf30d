"""A small deterministic SVG bar chart of the K-score components (hand-written: integer coordinates, no clock, no
random ids, so the same K-score always gives the same bytes).

Each component (per-mille, 0..1000) is one horizontal bar; the gate's minimum for it, when there is one, is a
dark tick across the bar. Bars below their minimum are drawn in the failure colour.

    >>> svg = kscore_svg({"A": 900, "S": 1000, "L": 500, "C": 700, "V": 1000}, minimums={"A": 800, "L": 600})
    >>> svg.startswith("<svg") and svg.count("<rect") == 10
    True
    >>> kscore_svg({"A": 900, "S": 1000, "L": 500, "C": 700, "V": 1000}, minimums={}) == kscore_svg(
    ...     {"V": 1000, "C": 700, "L": 500, "S": 1000, "A": 900}, minimums={})
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

FONT = "KolmSans"    # the pinned font family of the binder (render.py)
ORDER = ("A", "S", "L", "C", "V")
NAMES = {"A": "Accuracy", "S": "Safety", "L": "Latency", "C": "Cost", "V": "Verifiability"}
_LABEL_W = 120       # px reserved for the label column
_BAR_W = 400         # px for 1000 per-mille
_ROW_H = 26
_BAR_H = 16
_PAD = 6
_OK, _FAIL, _TRACK, _INK = "#2f6f4f", "#b03a2e", "#e6e9ed", "#1d2733"


def _fmt(per_mille: int) -> str:
    return f"{per_mille // 10}.{per_mille % 10} %"


def kscore_svg(components: Mapping[str, int], *, minimums: Mapping[str, int]) -> str:
    """The chart as SVG text. ``components`` and ``minimums`` are per-mille integers keyed by A, S, L, C, V."""
    names = [c for c in ORDER if c in components] + sorted(c for c in components if c not in ORDER)
    width = _LABEL_W + _BAR_W + 70
    height = _PAD * 2 + _ROW_H * len(names) + 16
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="{FONT}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="K-score components">']
    for row, name in enumerate(names):
        value = max(0, min(1000, int(components[name])))
        y = _PAD + row * _ROW_H
        low = minimums.get(name)
        colour = _FAIL if low is not None and value < low else _OK
        label = escape(f"{name}  {NAMES.get(name, '')}")
        parts.append(f'<text x="0" y="{y + _BAR_H - 3}" font-size="11" fill="{_INK}">{label}</text>')
        parts.append(f'<rect x="{_LABEL_W}" y="{y}" width="{_BAR_W}" height="{_BAR_H}" fill="{_TRACK}"/>')
        parts.append(f'<rect x="{_LABEL_W}" y="{y}" width="{value * _BAR_W // 1000}" height="{_BAR_H}" '
                     f'fill="{colour}"/>')
        if low is not None:
            x = _LABEL_W + max(0, min(1000, int(low))) * _BAR_W // 1000
            parts.append(f'<line x1="{x}" y1="{y - 3}" x2="{x}" y2="{y + _BAR_H + 3}" stroke="{_INK}" '
                         f'stroke-width="2"/>')
        parts.append(f'<text x="{_LABEL_W + _BAR_W + 6}" y="{y + _BAR_H - 3}" font-size="11" '
                     f'fill="{_INK}">{_fmt(value)}</text>')
    axis_y = _PAD + _ROW_H * len(names) + 10
    for tick in range(0, 1001, 250):
        x = _LABEL_W + tick * _BAR_W // 1000
        parts.append(f'<text x="{x}" y="{axis_y}" font-size="9" fill="{_INK}" text-anchor="middle">{tick}</text>')
    parts.append("</svg>")
    return "".join(parts)
