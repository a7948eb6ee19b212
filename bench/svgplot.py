"""Tiny, dependency-free SVG charts for the benchmark report.

The benchmark scripts under ``bench/`` produce numbers (instance counts over
time, request latencies, per-contender totals); this module turns them into
standalone SVG files that can be linked from the Markdown report or opened in
a browser. It uses the Python standard library only, so it runs wherever
``python3`` (3.11+) does, without matplotlib or any other install.

Three chart kinds are provided:

* :func:`line_chart` -- one polyline (or step function) per series,
* :func:`cdf_chart` -- the empirical CDF of raw samples per series,
* :func:`bar_chart` -- grouped bars, one group per category.

Every chart is 720x400 px (``viewBox`` set), white background, sans-serif
text, with a title, axis labels, "nice" ticks (1/2/5 x 10^k steps, or decades
on log axes) with grid lines, and a legend. Colours come from the Okabe-Ito
colour-blind-friendly palette, assigned by series order, so the same order of
contenders gets the same colours in every chart.

Bad input is tolerated rather than rejected: ``None``/NaN/infinite values are
skipped, empty series are listed in the legend as "(no data)", single points
and all-equal values get a padded axis, and on log axes values <= 0 are
clipped to the smallest positive value present. Output is deterministic (same
input, same bytes) and coordinates are written with one decimal.
"""

from __future__ import annotations

import math
import os
import re

__all__ = ["line_chart", "cdf_chart", "bar_chart", "PALETTE"]

WIDTH = 720
HEIGHT = 400

# Okabe & Ito (2008), ordered so that the first colours are the most distinct
# on white; yellow comes last because it has the least contrast.
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)
# After the palette is used up, series repeat the colours with a dash pattern
# (lines) or a lighter fill with an outline (bars).
_DASHES = ("", "6 3", "2 2", "8 3 2 3")

_TOP = 44  # space for the title
_TITLE_SIZE = 16
_LABEL_SIZE = 12
_TICK_SIZE = 11
_LEGEND_SIZE = 11
_VALUE_SIZE = 10
_LEGEND_MAX_CHARS = 30
_CATEGORY_MAX_CHARS = 28
_GRID = "#e3e3e3"
_INK = "#333333"

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# --------------------------------------------------------------------------
# small helpers


def _esc(text) -> str:
    """Text as XML character data / attribute value (quotes escaped too)."""
    s = _XML_BAD.sub("\ufffd", str(text))
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def _f(v: float) -> str:
    """A coordinate with at most one decimal, no trailing '.0', no '-0'."""
    s = f"{v:.1f}"
    if s.endswith(".0"):
        s = s[:-2]
    if s == "-0":
        s = "0"
    return s


def _num(v):
    """v as a finite float, or None for None/NaN/inf/non-numbers."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(f) or abs(f) > 1e300:
        return None
    return f


def _strip_zeros(s: str) -> str:
    if "e" in s:
        mant, exp = s.split("e")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _fmt_value(v: float) -> str:
    """Compact number: 1234 -> '1234', 12.345 -> '12.3', 0.0123 -> '0.012'."""
    if v == 0:
        return "0"
    a = abs(v)
    sign = "-" if v < 0 else ""
    for unit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if a >= unit:
            return sign + _fmt_value(a / unit) + suffix
    if a >= 100:
        s = f"{a:.0f}"
    elif a >= 10:
        s = f"{a:.1f}"
    elif a >= 1:
        s = f"{a:.2f}"
    elif a >= 0.001:
        s = f"{a:.{1 - math.floor(math.log10(a))}f}"
    else:
        s = f"{a:.1e}"
    s = _strip_zeros(s)
    return "0" if s == "0" else sign + s


def _text_w(s: str, size: float) -> float:
    """Rough rendered width of s in a sans-serif font of the given size."""
    return len(s) * size * 0.6


def _truncate(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _items(series):
    """(name, values) pairs of a mapping, in its order; anything else -> []."""
    if series is None or not hasattr(series, "items"):
        return []
    try:
        return [(str(k), v) for k, v in series.items()]
    except Exception:  # a broken mapping should not break the report
        return []


def _iter(values):
    if values is None or isinstance(values, (str, bytes)):
        return []
    try:
        return list(values)
    except TypeError:
        return []


def _style(i: int):
    """(colour, dash pattern, cycle) for the i-th series."""
    cycle = i // len(PALETTE)
    return PALETTE[i % len(PALETTE)], _DASHES[cycle % len(_DASHES)], cycle


# --------------------------------------------------------------------------
# axes


class _Axis:
    """A data range mapped to [0, 1], with ticks as (value, label) pairs.

    ``grid`` lists values that get a grid line without a label (log axes
    with many decades label only some of them)."""

    def __init__(self, lo, hi, ticks, log=False, grid=()):
        self.lo, self.hi, self.ticks, self.log = lo, hi, ticks, log
        self.grid = list(grid) or [v for v, _ in ticks]
        if log:
            self._a, self._b = math.log10(lo), math.log10(hi)
        else:
            self._a, self._b = lo, hi

    def frac(self, v: float) -> float:
        if self.log:
            v = math.log10(v) if v > 0 else self._a
        r = (v - self._a) / (self._b - self._a)
        # The axes always cover the data; this only guards against rounding.
        return min(max(r, 0.0), 1.0)


def _pad_range(lo: float, hi: float):
    if hi < lo:
        lo, hi = hi, lo
    mag = max(abs(lo), abs(hi))
    if hi - lo <= mag * 1e-9 or hi - lo < 1e-290:
        if mag < 1e-290:  # zero, or so close to it that the step would underflow
            return 0.0, 1.0
        return lo - mag * 0.5, hi + mag * 0.5
    return lo, hi


def _step_value(k: int, m: int, e: int) -> float:
    # Integer arithmetic first so that 3 x 0.1 comes out as 0.3, not 0.30000000000000004.
    return float(k * m * 10**e) if e >= 0 else (k * m) / 10 ** (-e)


def _linear_labels(vals, m, e):
    maxabs = max((abs(v) for v in vals), default=0.0)
    unit, suffix, ue = 1.0, "", 0
    for u, s, x in ((1e12, "T", 12), (1e9, "G", 9), (1e6, "M", 6)):
        if maxabs >= u:
            unit, suffix, ue = u, s, x
            break
    step = _step_value(1, m, e)
    labels = []
    for v in vals:
        if abs(v) < step * 1e-6:
            v = 0.0
        if e - ue < -5:
            s = _strip_zeros(f"{v:.2e}")
        else:
            s = _strip_zeros(f"{v / unit:.{max(0, ue - e)}f}")
        labels.append(s + suffix if s != "0" else "0")
    return labels


def _linear_axis(lo: float, hi: float, target: int, loose: bool = True) -> _Axis:
    lo, hi = _pad_range(lo, hi)
    raw = (hi - lo) / max(1, target)
    e = math.floor(math.log10(raw))
    f = raw / 10.0**e
    # The 1/2/5 multiple nearest (geometrically) to the raw step, so the
    # tick count stays close to the target.
    if f < 1.42:
        m = 1
    elif f < 3.16:
        m = 2
    elif f < 7.07:
        m = 5
    else:
        m, e = 1, e + 1
    step = _step_value(1, m, e)
    if loose:
        k0 = math.floor(lo / step + 1e-9)
        k1 = math.ceil(hi / step - 1e-9)
        lo, hi = _step_value(k0, m, e), _step_value(k1, m, e)
    else:
        k0 = math.ceil(lo / step - 1e-9)
        k1 = math.floor(hi / step + 1e-9)
    vals = [_step_value(k, m, e) for k in range(k0, k1 + 1)]
    return _Axis(lo, hi, list(zip(vals, _linear_labels(vals, m, e))))


def _decade_label(e: int) -> str:
    if 0 <= e <= 6:
        return str(10**e)
    if -4 <= e < 0:
        return f"{10.0 ** e:.{-e}f}"
    if 6 < e <= 14:
        return _fmt_value(10.0**e)
    return f"1e{e}"


def _log_axis(lo: float, hi: float, *, below: bool = False) -> _Axis:
    """Decade axis covering [lo, hi] (both > 0). ``below`` puts the bottom
    strictly under lo, so that a bar of height lo is still visible."""
    llo, lhi = round(math.log10(lo), 9), round(math.log10(hi), 9)
    e0 = max(-307, math.ceil(llo) - 1 if below else math.floor(llo))  # 10.0**e stays normal
    e1 = min(308, max(math.ceil(lhi), e0 + 1))
    every = max(1, math.ceil((e1 - e0) / 8))
    ticks = [(10.0**e, _decade_label(e)) for e in range(e0, e1 + 1) if (e - e0) % every == 0]
    grid = [10.0**e for e in range(e0, e1 + 1)] if e1 - e0 <= 16 else [v for v, _ in ticks]
    return _Axis(10.0**e0, 10.0**e1, ticks, log=True, grid=grid)


# --------------------------------------------------------------------------
# SVG assembly


def _text(x, y, s, *, size=None, anchor=None, weight=None, fill=None, rotate=None, title=None):
    attrs = [f'x="{_f(x)}"', f'y="{_f(y)}"']
    if size is not None:
        attrs.append(f'font-size="{_f(size)}"')
    if anchor:
        attrs.append(f'text-anchor="{anchor}"')
    if weight:
        attrs.append(f'font-weight="{weight}"')
    if fill:
        attrs.append(f'fill="{fill}"')
    if rotate is not None:
        attrs.append(f'transform="rotate({_f(rotate)} {_f(x)} {_f(y)})"')
    inner = _esc(s)
    if title is not None:
        inner = f"<title>{_esc(title)}</title>{inner}"
    return f"<text {' '.join(attrs)}>{inner}</text>"


def _line(x1, y1, x2, y2):
    return f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}"/>'


def _simplify(points, q: float = 0.1):
    """Pixel points snapped to a q grid, without consecutive duplicates and
    without the middle points of horizontal/vertical runs (exact shape)."""
    out = []
    for x, y in points:
        p = (round(x / q) * q, round(y / q) * q)
        if out and _f(out[-1][0]) == _f(p[0]) and _f(out[-1][1]) == _f(p[1]):
            continue
        if len(out) >= 2:
            (ax, ay), (bx, by) = out[-2], out[-1]
            same_x = _f(ax) == _f(bx) == _f(p[0])
            same_y = _f(ay) == _f(by) == _f(p[1])
            if same_x and (ay - by) * (by - p[1]) >= 0 or same_y and (ax - bx) * (bx - p[0]) >= 0:
                out[-1] = p
                continue
        out.append(p)
    return out


def _decimate(points, col: float = 0.5):
    """For x-sorted pixel points: where many share a pixel column, keep only
    the first, lowest, highest and last of them (the visible envelope)."""
    out, i, n = [], 0, len(points)
    while i < n:
        key = round(points[i][0] / col)
        j = i
        while j < n and round(points[j][0] / col) == key:
            j += 1
        group = points[i:j]
        if len(group) <= 4:
            out.extend(group)
        else:
            keep = {0, len(group) - 1}
            keep.add(min(range(len(group)), key=lambda k: group[k][1]))
            keep.add(max(range(len(group)), key=lambda k: group[k][1]))
            out.extend(group[k] for k in sorted(keep))
        i = j
    return out


class _Chart:
    """Common frame: title, plot box, grid, ticks, axis labels, legend."""

    def __init__(self, title, legend, bottom):
        # legend: list of (label, colour, dash, cycle, kind) with kind "line"/"bar"
        self.title = "" if title is None else str(title)
        self.legend = legend
        self.bottom = bottom
        texts = [_truncate(lbl, _LEGEND_MAX_CHARS) for lbl, *_ in legend]
        self.legend_w = (max(_text_w(t, _LEGEND_SIZE) for t in texts) + 42) if legend else 0
        self.y0 = _TOP
        self.y1 = HEIGHT - bottom
        self.x0 = self.x1 = 0.0
        self.parts = []

    def plot_box(self, y_axis: _Axis, y_label: str):
        tick_w = max((_text_w(lbl, _TICK_SIZE) for _, lbl in y_axis.ticks), default=0)
        self.x0 = tick_w + (34 if y_label else 16)
        self.x1 = WIDTH - 14 - (self.legend_w + 12 if self.legend else 0)
        if self.x1 - self.x0 < 120:  # absurdly long tick labels or legend
            self.x1 = self.x0 + 120

    def px(self, axis: _Axis, v):
        return self.x0 + axis.frac(v) * (self.x1 - self.x0)

    def py(self, axis: _Axis, v):
        return self.y1 - axis.frac(v) * (self.y1 - self.y0)

    def frame(self, x_axis, y_axis, x_label, y_label):
        """Background, grid, ticks and labels; x_axis may be None (bars)."""
        p = self.parts
        p.append(f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>')
        size = min(_TITLE_SIZE, max(8.0, (WIDTH - 20) / max(1.0, _text_w(self.title, 1.0))))
        p.append(_text(WIDTH / 2, 26, self.title, size=size, anchor="middle", weight="bold"))
        grid = []
        for v in y_axis.grid:
            y = self.py(y_axis, v)
            if self.y0 - 0.5 <= y <= self.y1 + 0.5:
                grid.append(_line(self.x0, y, self.x1, y))
        if x_axis is not None:
            for v in x_axis.grid:
                x = self.px(x_axis, v)
                if self.x0 - 0.5 <= x <= self.x1 + 0.5:
                    grid.append(_line(x, self.y0, x, self.y1))
        if grid:
            p.append(f'<g stroke="{_GRID}" stroke-width="1">')
            p.extend(grid)
            p.append("</g>")
        p.append(
            f'<rect x="{_f(self.x0)}" y="{_f(self.y0)}" width="{_f(self.x1 - self.x0)}" '
            f'height="{_f(self.y1 - self.y0)}" fill="none" stroke="#bbbbbb"/>'
        )
        marks, labels = [], []
        for v, lbl in y_axis.ticks:
            y = self.py(y_axis, v)
            if self.y0 - 0.5 <= y <= self.y1 + 0.5:
                marks.append(_line(self.x0 - 4, y, self.x0, y))
                labels.append(_text(self.x0 - 7, y + 4, lbl, anchor="end"))
        if x_axis is not None:
            for v, lbl in x_axis.ticks:
                x = self.px(x_axis, v)
                if self.x0 - 0.5 <= x <= self.x1 + 0.5:
                    marks.append(_line(x, self.y1, x, self.y1 + 4))
                    labels.append(_text(x, self.y1 + 17, lbl, anchor="middle"))
        marks.append(_line(self.x0, self.y0, self.x0, self.y1))
        marks.append(_line(self.x0, self.y1, self.x1, self.y1))
        p.append(f'<g stroke="{_INK}" stroke-width="1">')
        p.extend(marks)
        p.append("</g>")
        p.append(f'<g font-size="{_TICK_SIZE}" fill="{_INK}">')
        p.extend(labels)
        p.append("</g>")
        if x_label:
            p.append(_text((self.x0 + self.x1) / 2, self.y1 + 38, x_label, size=_LABEL_SIZE, anchor="middle"))
        if y_label:
            cy = (self.y0 + self.y1) / 2
            p.append(_text(16, cy, y_label, size=_LABEL_SIZE, anchor="middle", rotate=-90))

    def no_data(self):
        self.parts.append(
            _text((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2, "no data", size=14, anchor="middle", fill="#888888")
        )

    def draw_legend(self):
        if not self.legend:
            return
        p = self.parts
        n = len(self.legend)
        avail = HEIGHT - 10 - self.y0
        row = min(18.0, (avail - 10) / n)
        size = min(_LEGEND_SIZE, max(5.0, row * 0.8))
        x, y = self.x1 + 12, self.y0
        p.append('<g class="legend">')
        p.append(
            f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(self.legend_w)}" height="{_f(10 + n * row)}" '
            'fill="#ffffff" stroke="#999999"/>'
        )
        for i, (label, colour, dash, cycle, kind) in enumerate(self.legend):
            cy = y + 5 + row * i + row / 2
            if kind == "bar":
                s = min(12.0, row - 4)
                extra = f' fill-opacity="0.55" stroke="{colour}"' if cycle else ""
                p.append(
                    f'<rect x="{_f(x + 10)}" y="{_f(cy - s / 2)}" width="{_f(s)}" height="{_f(s)}" fill="{colour}"{extra}/>'
                )
            else:
                da = f' stroke-dasharray="{dash}"' if dash else ""
                p.append(
                    f'<line x1="{_f(x + 8)}" y1="{_f(cy)}" x2="{_f(x + 30)}" y2="{_f(cy)}" '
                    f'stroke="{colour}" stroke-width="2.5"{da}/>'
                )
            shown = _truncate(label, _LEGEND_MAX_CHARS)
            p.append(
                _text(x + 36, cy + size * 0.35, shown, size=size, fill=_INK, title=label if shown != label else None)
            )
        p.append("</g>")

    def write(self, path):
        doc = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="{_TICK_SIZE}">',
            f"<title>{_esc(self.title)}</title>",
            *self.parts,
            "</svg>",
        ]
        path = os.fspath(path)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(doc) + "\n")


def _polyline(points, colour, dash):
    """A series path in pixel coordinates (a dot if it collapses to one point)."""
    if not points:
        return ""
    if len(points) == 1:
        x, y = points[0]
        return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="3" fill="{colour}"/>'
    da = f' stroke-dasharray="{dash}"' if dash else ""
    coords = " ".join(f"{_f(x)},{_f(y)}" for x, y in points)
    return (
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round" '
        f'stroke-linecap="round"{da} points="{coords}"/>'
    )


# --------------------------------------------------------------------------
# public API


def line_chart(path, title, x_label, y_label, series, *, step=False, y_min=0.0):
    """series: dict[str, list[tuple[float, float]]] — one polyline per name, in legend order.
    step=True draws a step function (for counts like instances over time).

    Points are sorted by x; points with a missing/NaN coordinate are skipped.
    The y axis starts at y_min (or lower if the data does; y_min=None means
    "from the data"). A series with a single point is drawn as a dot."""
    data = []
    for name, pts in _items(series):
        clean = []
        for pt in _iter(pts):
            if isinstance(pt, (str, bytes)):
                continue
            try:
                x, y = _num(pt[0]), _num(pt[1])
            except (TypeError, IndexError, KeyError):
                continue
            if x is not None and y is not None:
                clean.append((x, y))
        clean.sort(key=lambda p: p[0])
        data.append((name, clean))

    xs = [x for _, pts in data for x, _ in pts]
    ys = [y for _, pts in data for _, y in pts]
    floor = _num(y_min)
    if ys:
        ylo, yhi = min(ys), max(ys)
        if floor is not None and floor <= ylo:
            ylo = floor
    else:
        ylo = floor if floor is not None else 0.0
        yhi = ylo + 1.0
    xlo, xhi = (min(xs), max(xs)) if xs else (0.0, 1.0)

    legend = []
    for i, (name, pts) in enumerate(data):
        colour, dash, cycle = _style(i)
        legend.append((name if pts else f"{name} (no data)", colour, dash, cycle, "line"))
    chart = _Chart(title, legend, bottom=52 if x_label else 34)
    y_axis = _linear_axis(ylo, yhi, max(2, int((chart.y1 - chart.y0) / 55)))
    chart.plot_box(y_axis, y_label)
    x_axis = _linear_axis(xlo, xhi, max(2, int((chart.x1 - chart.x0) / 90)), loose=False)
    chart.frame(x_axis, y_axis, x_label, y_label)

    if not xs:
        chart.no_data()
    else:
        for i, (name, pts) in enumerate(data):
            if not pts:
                continue
            if step:
                stepped = [pts[0]]
                for x, y in pts[1:]:
                    stepped.append((x, stepped[-1][1]))
                    stepped.append((x, y))
                pts = stepped
            pix = [(chart.px(x_axis, x), chart.py(y_axis, y)) for x, y in pts]
            if not step:
                pix = _decimate(pix)
            colour, dash, _ = _style(i)
            chart.parts.append(_polyline(_simplify(pix), colour, dash))
    chart.draw_legend()
    chart.write(path)


def cdf_chart(path, title, x_label, series, *, log_x=False):
    """series: dict[str, list[float]] — for each name, raw samples (e.g. latencies in ms);
    draws the empirical CDF (y from 0 to 1, labelled 'fraction of requests').

    None/NaN samples are skipped. With log_x, samples <= 0 are clipped to the
    smallest positive sample of all series (1 if there is none)."""
    data = [(name, [v for v in map(_num, _iter(vals)) if v is not None]) for name, vals in _items(series)]
    if log_x:
        positive = [v for _, vals in data for v in vals if v > 0]
        smallest = min(positive) if positive else 1.0
        data = [(name, [v if v > 0 else smallest for v in vals]) for name, vals in data]
    data = [(name, sorted(vals)) for name, vals in data]
    allv = [v for _, vals in data for v in vals]

    legend = []
    for i, (name, vals) in enumerate(data):
        colour, dash, cycle = _style(i)
        legend.append((name if vals else f"{name} (no data)", colour, dash, cycle, "line"))
    chart = _Chart(title, legend, bottom=52 if x_label else 34)
    y_label = "fraction of requests"
    y_axis = _linear_axis(0.0, 1.0, max(2, int((chart.y1 - chart.y0) / 55)))
    chart.plot_box(y_axis, y_label)
    if log_x:
        x_axis = _log_axis(min(allv), max(allv)) if allv else _log_axis(1.0, 10.0)
    else:
        lo, hi = (min(allv), max(allv)) if allv else (0.0, 1.0)
        x_axis = _linear_axis(lo, hi, max(2, int((chart.x1 - chart.x0) / 90)))
    chart.frame(x_axis, y_axis, x_label, y_label)

    if not allv:
        chart.no_data()
    else:
        for i, (name, vals) in enumerate(data):
            if not vals:
                continue
            n = len(vals)
            pts = []
            j = 0
            while j < n:
                k = j
                while k < n and vals[k] == vals[j]:
                    k += 1
                pts.append((vals[j], j / n))
                pts.append((vals[j], k / n))
                j = k
            pix = [(chart.px(x_axis, x), chart.py(y_axis, y)) for x, y in pts]
            colour, dash, _ = _style(i)
            # Half-pixel grid: a monotone staircase then has at most ~1600
            # corners however many samples there are.
            chart.parts.append(_polyline(_simplify(pix, 0.5), colour, dash))
    chart.draw_legend()
    chart.write(path)


def bar_chart(path, title, y_label, categories, series, *, log_y=False):
    """Grouped bars. categories: list[str] (x groups), series: dict[str, list[float|None]]
    with one value per category (None = missing, draw nothing and write 'n/a').

    Value lists shorter than categories are padded with None, longer ones cut.
    With log_y, values <= 0 are drawn at the smallest positive value present
    (their printed value stays the real one)."""
    cats = [str(c) for c in _iter(categories)]
    data = []
    for name, vals in _items(series):
        vals = [_num(v) for v in _iter(vals)][: len(cats)]
        vals += [None] * (len(cats) - len(vals))
        data.append((name, vals))
    present = [v for _, vals in data for v in vals if v is not None]

    legend = []
    for i, (name, vals) in enumerate(data):
        colour, dash, cycle = _style(i)
        empty = all(v is None for v in vals)
        legend.append((f"{name} (no data)" if empty else name, colour, dash, cycle, "bar"))

    shown_cats = [_truncate(c, _CATEGORY_MAX_CHARS) for c in cats]
    chart = _Chart(title, legend, bottom=34)
    # Category labels: horizontal if they fit under their group, else slanted.
    # The group width depends on the plot width, which depends on the y tick
    # labels; estimate it with a typical left margin first.
    est_group = (WIDTH - 80 - 14 - (chart.legend_w + 12 if legend else 0)) / max(1, len(cats))
    cat_w = max((_text_w(c, _TICK_SIZE) for c in shown_cats), default=0)
    slant = cat_w > est_group - 6
    if slant:
        chart.bottom = 26 + min(110.0, cat_w * 0.5)
        chart.y1 = HEIGHT - chart.bottom

    if log_y:
        positive = [v for v in present if v > 0]
        smallest = min(positive) if positive else 1.0
        top = max(positive) if positive else smallest
        y_axis = _log_axis(smallest, top * 2.5, below=True)
    else:
        lo = min([0.0] + present)
        hi = max([0.0] + present)
        if hi == lo:
            hi = lo + 1.0
        span = hi - lo
        if hi > 0:
            hi += span * 0.08  # room for the value labels
        if lo < 0:
            lo -= span * 0.08
        y_axis = _linear_axis(lo, hi, max(2, int((chart.y1 - chart.y0) / 55)))
    chart.plot_box(y_axis, y_label)
    chart.frame(None, y_axis, None, y_label)

    p = chart.parts
    if not cats or not data:
        chart.no_data()
    else:
        group_w = (chart.x1 - chart.x0) / len(cats)
        bar_w = group_w * 0.8 / len(data)
        gap = group_w * 0.2 / 2
        base = chart.y1 if log_y else min(max(chart.py(y_axis, 0.0), chart.y0), chart.y1)
        if not log_y and y_axis.lo < 0 < y_axis.hi:
            p.append(f'<g stroke="{_INK}">{_line(chart.x0, base, chart.x1, base)}</g>')
        value_labels = [_fmt_value(v) if v is not None else "n/a" for _, vals in data for v in vals]
        widest = max((_text_w(s, _VALUE_SIZE) for s in value_labels), default=0)
        rotate = widest > bar_w + gap
        vsize = max(6.0, min(float(_VALUE_SIZE), bar_w + 2)) if rotate else float(_VALUE_SIZE)
        bars, texts = [], []
        for i, (name, vals) in enumerate(data):
            colour, _, cycle = _style(i)
            extra = f' fill-opacity="0.55" stroke="{colour}"' if cycle else ""
            for c, v in enumerate(vals):
                bx = chart.x0 + c * group_w + gap + i * bar_w
                cx = bx + bar_w / 2
                if v is None:
                    ty = base - 3
                    texts.append(
                        _text(cx + (vsize * 0.35 if rotate else 0), ty, "n/a", size=vsize, fill="#777777",
                              anchor="start" if rotate else "middle", rotate=-90 if rotate else None)
                    )
                    continue
                drawn = (v if v > 0 else smallest) if log_y else v
                top = chart.py(y_axis, drawn)
                y, h = min(top, base), abs(base - top)
                if _f(h) != "0":
                    bars.append(
                        f'<rect x="{_f(bx)}" y="{_f(y)}" width="{_f(max(bar_w - 1, 0.5))}" height="{_f(h)}" '
                        f'fill="{colour}"{extra}/>'
                    )
                down = (not log_y) and v < 0
                label = _fmt_value(v)
                if rotate:
                    ty = top + 3 if down else top - 3
                    texts.append(
                        _text(cx + vsize * 0.35, ty, label, size=vsize, anchor="end" if down else "start", rotate=-90)
                    )
                else:
                    ty = top + 11 if down else top - 3
                    texts.append(_text(cx, ty, label, size=vsize, anchor="middle"))
        p.extend(bars)
        p.append(f'<g fill="{_INK}">')
        p.extend(texts)
        p.append("</g>")
        cat_parts = []
        for c, (full, shown) in enumerate(zip(cats, shown_cats)):
            cx = chart.x0 + (c + 0.5) * group_w
            tip = full if shown != full else None
            if slant:
                # A slanted label runs down and to the left; keep it on the canvas.
                room = int((cx - 2) / (_text_w("m", _TICK_SIZE) * 0.87))
                shown = _truncate(full, max(3, min(_CATEGORY_MAX_CHARS, room)))
                tip = full if shown != full else None
                cat_parts.append(_text(cx + 3, chart.y1 + 12, shown, anchor="end", rotate=-30, title=tip))
            else:
                cat_parts.append(_text(cx, chart.y1 + 17, shown, anchor="middle", title=tip))
        p.append(f'<g font-size="{_TICK_SIZE}" fill="{_INK}">')
        p.extend(cat_parts)
        p.append("</g>")
    chart.draw_legend()
    chart.write(path)
