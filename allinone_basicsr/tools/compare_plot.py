"""compare's figures: the bar plot of one metric per test set and method (the averages beside), and its files
(PNG always, SVG / PDF with their text kept as text); the values as the table shows them."""
import math
import re
from os import path as osp

from allinone_basicsr.utils.metric_table import format_value

PLOT_FORMATS = ('png', 'svg', 'pdf')


def finite(value):
    return value is not None and math.isfinite(value)


def show(value, metric):
    """A value as the table shows it (``utils.metric_table.format_value``); a missing one as '–'."""
    return '–' if value is None else format_value(metric, value)


def _wrap(text, width):
    """``text`` in lines of about ``width`` characters, broken after '_', '-', '/' or spaces (never cut)."""
    if len(text) <= width:
        return text
    lines, line = [], ''
    for part in re.findall(r'[^_\-/ ]+[_\-/ ]*|[_\-/ ]+', text):
        while len(part) > width:  # a part longer than a line: split it (still no character lost)
            if line:
                lines.append(line)
                line = ''
            lines.append(part[:width])
            part = part[width:]
        if line and len(line) + len(part.rstrip()) > width:
            lines.append(line)
            line = ''
        line += part
    if line:
        lines.append(line)
    return '\n'.join(lines_.rstrip(' ') for lines_ in lines)


def _locator():
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10])


def _y_range(values):
    """(low, high, baseline): bars start at the baseline, the range shows the differences, not the zero."""
    if not values:
        return 0.0, 1.0, 0.0
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        span = 0.1 * abs(high) or 1.0
    if low <= 0 <= high:  # values on both sides of zero: bars from zero
        return low - (0.3 if low < 0 else 0.12) * span, high + 0.3 * span, 0.0
    if low > 0:  # all positive: from a bit below the smallest value (a round number, never below 0)
        bottom = low - 0.3 * span
        top = high + 0.2 * (high - bottom)
        bottom = max([0.0] + [t for t in _locator().tick_values(bottom, top) if t <= bottom])  # on a tick
        return bottom, top, bottom
    top = min(0.0, high + 0.3 * span)  # all negative: bars hang from a bit above the largest value
    return low - 0.3 * (top - low), top, top


def _unit(metric):
    return ' (dB)' if 'psnr' in metric.lower() else ''


def plot_metric(methods, sets, table, metric, averages=None, counts=None):
    """The grouped bar plot as a matplotlib ``Figure`` (Agg canvas, no display needed).

    One group per test set plus ``Average`` (when ``averages`` {method: value} is given), one colour per method,
    the value above each bar. A non-finite value gets no bar but a marker with its text: ``inf`` at the top of the
    axis, ``nan`` / ``-inf`` at the bottom; a missing one is labelled ``n/a``. ``counts`` {method: number of sets
    averaged} marks an average over fewer sets than shown with '*'.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    groups = list(sets) + (['Average'] if averages is not None else [])
    series = {m: [table[m].get(s) for s in sets] + ([averages.get(m)] if averages is not None else [])
              for m in methods}
    low, high, base = _y_range([v for m in methods for v in series[m] if finite(v)])
    if any(v == math.inf for m in methods for v in series[m]):
        high += 0.08 * (high - low)  # room for the inf markers above the value labels
    n = len(methods)
    group_in = max(1.0, 0.28 * n + 0.45)  # inches per group: room for n vertical value labels
    width_in = max(6.4, 1.3 + group_in * len(groups))
    label_chars = max(8, int(group_in * 72 / (9 * 0.62)))  # characters of 9 pt text per group
    ticks = [_wrap(g, label_chars) for g in groups]
    if averages is not None:
        ticks[-1] = 'Average\n(finite sets)'
    tick_lines = max(t.count('\n') + 1 for t in ticks)
    legend_cols = max(1, min(n, int((width_in - 0.5) / (0.55 + 0.075 * max(len(m) for m in methods)))))
    legend_rows = math.ceil(n / legend_cols)
    height_in = 3.9 + 0.17 * tick_lines + 0.22 * legend_rows
    fig = Figure(figsize=(width_in, height_in), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = colormaps['tab10'].colors
    bar = 0.8 / n
    top_axes = ax.get_xaxis_transform()  # x in data, y in axes fraction: markers pinned to the axis ends
    for j, method in enumerate(methods):
        colour = colours[j % len(colours)]
        for i, value in enumerate(series[method]):
            x = i - 0.4 + bar * (j + 0.5)
            if finite(value):
                ax.bar(x, value - base, bar * 0.92, bottom=base, color=colour)
                text = show(value, metric)
                if averages is not None and i == len(groups) - 1 and counts and counts.get(method, 0) < len(sets):
                    text += '*'
                up = value >= base
                ax.annotate(text, (x, value), xytext=(0, 2 if up else -2), textcoords='offset points',
                            ha='center', va='bottom' if up else 'top', rotation=90, fontsize=7.5)
                continue
            if value is not None and value == math.inf:  # off the chart: a marker at the top, no bar
                ax.plot(x, 0.965, marker='^', color=colour, markersize=8, transform=top_axes, clip_on=False)
                ax.annotate('inf', (x, 0.935), xycoords=top_axes, ha='center', va='top', fontsize=8,
                            fontweight='bold', color=colour)
            else:  # nan, -inf or missing: a marker at the bottom, no bar
                text = 'n/a' if value is None else show(value, metric)
                marker = 'v' if value == -math.inf else 'x'
                ax.plot(x, 0.035, marker=marker, color=colour, markersize=8, transform=top_axes, clip_on=False)
                ax.annotate(text, (x, 0.07), xycoords=top_axes, ha='center', va='bottom', fontsize=8,
                            fontweight='bold', color=colour)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(low, high)
    ax.set_xticks(range(len(groups)), ticks, fontsize=9)
    ax.yaxis.set_major_locator(_locator())
    ax.grid(axis='y', color='0.88', linewidth=0.8)
    ax.set_axisbelow(True)
    if averages is not None and sets:
        ax.axvline(len(sets) - 0.5, color='0.6', linestyle='--', linewidth=0.8)
    ax.set_xlabel('test set')
    ax.set_ylabel(metric + _unit(metric))
    note = '' if base == 0 else f'; y-axis from {low:.4g}, not 0' if base == low else f'; bars from {base:.4g}, not 0'
    if counts and any(counts.get(m, 0) < len(sets) and averages.get(m) is not None for m in methods):
        note += '; * over fewer sets'
    title = f'{metric} per test set (Average: mean of the finite per-set values{note})'
    ax.set_title(_wrap(title, int(width_in * 72 / (10 * 0.55))), fontsize=10)
    handles = [Patch(color=colours[j % len(colours)], label=m) for j, m in enumerate(methods)]
    fig.legend(handles=handles, loc='outside lower center', ncols=legend_cols, frameon=False, fontsize=9)
    return fig


def save_plot(fig, out, metric, formats=()):
    """``compare_<metric>.png`` always, plus one file per extra format (svg, pdf); returns the paths.

    The vector copies keep their text as text (editable, searchable), the PDF with embedded TrueType fonts.
    """
    from matplotlib import rc_context
    paths = []
    for fmt in ['png'] + [f for f in formats if f != 'png']:
        if fmt not in PLOT_FORMATS:
            raise ValueError(f'--format {fmt}: expected one of {", ".join(PLOT_FORMATS)}')
        path = osp.join(out, f'compare_{metric}.{fmt}')
        with rc_context({'svg.fonttype': 'none', 'pdf.fonttype': 42}):
            fig.savefig(path, format=fmt, dpi=150)
        paths.append(path)
    return paths
