"""The report's charts as SVG files, drawn with matplotlib: lines over time, latency CDFs and
grouped bars. Takes plain numbers from the scenarios and writes files; measures nothing.

Same input, same bytes: the SVG ids are salted with a constant and the date is left out, so
a plot's git diff shows a change in its numbers, not fresh random ids and a timestamp. Text
stays text (not glyph outlines), which keeps the files small and their words searchable.
"""

from __future__ import annotations

import math
import os

from .tools import ensure_matplotlib

__all__ = ["line_chart", "cdf_chart", "bar_chart", "PALETTE"]

# Okabe & Ito (2008), colour-blind safe, assigned by series order so that a contender keeps
# its colour across charts (the scenarios list contenders in one order). Yellow is last:
# it has the least contrast on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
# Past eight series the colours repeat; the dash pattern tells the second round apart.
_DASHES = ("-", "--", ":", "-.")

# Inches. The SVG is measured in points (72 an inch) and browsers draw 96 px an inch, so
# this is 720 x 400 px, the size the report's layout expects.
_SIZE = (7.5, 25 / 6)
_STYLE = {
    "svg.hashsalt": "shoal-bench",
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9,
    "figure.titlesize": 11,
    "figure.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "axes.edgecolor": "#bbbbbb",
    "axes.axisbelow": True,
    "legend.fontsize": 8,
}


def _num(v):
    """v as a finite float, or None: the scenarios pass NaN for a contender with no answer."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _style(i: int) -> tuple[str, str]:
    return PALETTE[i % len(PALETTE)], _DASHES[(i // len(PALETTE)) % len(_DASHES)]


def _draw(draw, path, title, x_label, y_label):
    """A 720 x 400 px figure in the house style, filled by draw(ax), labelled and saved."""
    ensure_matplotlib()
    import matplotlib

    # No display on the benchmark machine, and no window should ever open from a run.
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # rcParams are read both while drawing and while writing, so the style spans both.
    with matplotlib.rc_context(_STYLE):
        # A bare Figure, not pyplot: nothing global to close or to leak between charts.
        fig = Figure(figsize=_SIZE, layout="constrained", facecolor="white")
        ax = fig.add_subplot()
        draw(ax)
        # Over the whole figure, not the axes: the legend narrows the axes, and the scenarios'
        # titles are long enough to spill off the left edge when centred over them.
        fig.suptitle(title)
        if x_label:
            ax.set_xlabel(x_label)
        if y_label:
            ax.set_ylabel(y_label)
        if ax.get_legend_handles_labels()[0]:
            # Beside the plot: over the data it would hide the tails that matter.
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        path = os.fspath(path)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fig.savefig(path, format="svg", metadata={"Date": None, "Title": title})


def _no_data(ax):
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#888888", fontsize=12)


def line_chart(path, title, x_label, y_label, series, *, step=False, y_min=0.0):
    """series: {name: [(x, y), ...]}, one line per name in legend order. step=True draws a
    step function (counts such as instances, which hold until the next sample). The y axis
    starts at y_min (lower if the data does; None: from the data). Points with a missing or
    NaN coordinate are skipped; an empty series is listed as "(no data)"."""

    def draw(ax):
        any_points = False
        for i, (name, pts) in enumerate((series or {}).items()):
            numbers = ((_num(x), _num(y)) for x, y in pts or [])
            clean = sorted((x, y) for x, y in numbers if x is not None and y is not None)
            colour, dash = _style(i)
            if not clean:
                ax.plot([], [], color=colour, linestyle=dash, label=f"{name} (no data)")
                continue
            any_points = True
            xs, ys = [p[0] for p in clean], [p[1] for p in clean]
            # A single sample would be an invisible zero-length line.
            marker = "o" if len(clean) == 1 else None
            style = dict(color=colour, linestyle=dash, linewidth=1.8, marker=marker, label=name)
            if step:
                ax.step(xs, ys, where="post", **style)
            else:
                ax.plot(xs, ys, **style)
        if not any_points:
            _no_data(ax)
            return
        ax.margins(x=0)
        if all(float(y).is_integer() for line in ax.get_lines() for y in line.get_ydata()):
            # Counts (instances): a tick at 2.5 instances would invite a wrong reading.
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        floor = _num(y_min)
        if floor is not None and floor <= ax.dataLim.y0:
            ax.set_ylim(bottom=floor)

    _draw(draw, path, title, x_label, y_label)


def cdf_chart(path, title, x_label, series, *, log_x=False):
    """series: {name: [sample, ...]} (e.g. latencies in ms); draws each name's empirical CDF,
    y from 0 to 1 labelled 'fraction of requests'. NaN samples are skipped; with log_x,
    samples <= 0 are drawn at the smallest positive sample of all series."""

    def draw(ax):
        data = [(name, [v for v in map(_num, vals or []) if v is not None]) for name, vals in (series or {}).items()]
        if log_x:
            positive = [v for _, vals in data for v in vals if v > 0]
            smallest = min(positive, default=1.0)
            data = [(name, [v if v > 0 else smallest for v in vals]) for name, vals in data]
            ax.set_xscale("log")
            _plain_log_labels(ax.xaxis)
        for i, (name, vals) in enumerate(data):
            colour, dash = _style(i)
            if vals:
                ax.ecdf(vals, color=colour, linestyle=dash, linewidth=1.8, label=name)
            else:
                ax.plot([], [], color=colour, linestyle=dash, label=f"{name} (no data)")
        ax.set_ylim(0, 1.02)
        everything = [v for _, vals in data for v in vals]
        if not everything:
            _no_data(ax)
        elif log_x:
            # Whole decades: with data inside one or two of them matplotlib would label a
            # single tick, and a log axis with one number on it cannot be read.
            lo = 10.0 ** math.floor(math.log10(min(everything)))
            hi = 10.0 ** math.ceil(math.log10(max(everything)))
            ax.set_xlim(lo, hi if hi > lo else lo * 10)

    _draw(draw, path, title, x_label, "fraction of requests")


def bar_chart(path, title, y_label, categories, series):
    """Grouped bars: one group per category, one bar per series name, each bar labelled with
    its value. series: {name: [value per category]}; None or NaN is a missing value, drawn
    as no bar and labelled 'n/a'."""

    def draw(ax):
        cats = [str(c) for c in categories or []]
        rows = []
        for name, vals in (series or {}).items():
            vals = [_num(v) for v in list(vals or [])[: len(cats)]]
            rows.append((name, vals + [None] * (len(cats) - len(vals))))
        if not cats or not rows:
            _no_data(ax)
            return
        width = 0.8 / len(rows)
        many = len(cats) * len(rows) > 12
        for i, (name, vals) in enumerate(rows):
            colour, _ = _style(i)
            xs = [c - 0.4 + width * (i + 0.5) for c in range(len(cats))]
            bars = ax.bar(
                xs,
                [0.0 if v is None else v for v in vals],
                width * 0.95,
                color=colour,
                label=f"{name} (no data)" if all(v is None for v in vals) else name,
                # A second round of the palette is told apart by a lighter fill.
                alpha=0.55 if i >= len(PALETTE) else 1.0,
            )
            labels = ["n/a" if v is None else _fmt_value(v) for v in vals]
            ax.bar_label(bars, labels=labels, padding=2, fontsize=7, rotation=90 if many else 0)
        # Slanted when the names would run into each other side by side.
        slant = max(map(len, cats)) * len(cats) > 90
        ax.set_xticks(range(len(cats)), cats, rotation=30 if slant else 0, ha="right" if slant else "center")
        ax.grid(False, axis="x")
        # Room beyond the longest bars for their labels.
        present = [v for _, vals in rows for v in vals if v is not None]
        lo, hi = min([0.0, *present]), max([0.0, *present])
        ax.set_ylim(lo * 1.1, hi * 1.1 if hi > 0 else 1.0)

    _draw(draw, path, title, None, y_label)


def _plain_log_labels(axis):
    """Decades as plain numbers (1000, not 10³), as in the report's tables."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_value(v)))
    axis.set_minor_formatter(NullFormatter())


def _fmt_value(v: float) -> str:
    """Short label for a value: 40621 -> '40621', 12.345 -> '12.3', 0.0123 -> '0.0123'."""
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"
