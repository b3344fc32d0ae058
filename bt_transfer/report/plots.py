"""PNG plots of the report: grouped bars per table, training curves per stage.

Matplotlib with the Agg backend (no display needed). PNGs carry no Software/date metadata, so the same
inputs give byte-identical files. Labels are shown as plain text, whatever characters they hold.
"""
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bt_transfer.core.fileio import atomic_write  # noqa: E402
from bt_transfer.report import curves as curve_data  # noqa: E402
from bt_transfer.report.aggregate import variant_setting  # noqa: E402
from bt_transfer.report.render import one_line  # noqa: E402

PNG_METADATA = {"Software": None}   # matplotlib otherwise stamps its version into every file


def plain(text):
    """``text`` as matplotlib shows it literally: one line, ``$`` not starting mathtext, and not hidden from the
    legend (matplotlib leaves out labels that start with an underscore)."""
    text = one_line(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())


def plot_table(table, path):
    """Grouped bars: one group per column, one bar per row that has a value; error bars are the std over
    seeds; our runs off the protocol are hatched, as they are footnoted in the table."""
    columns = table.spec.columns
    rows = [row for row in table.rows if any(c.key in row.cells for c in columns)]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(columns) + 2.5), 4.0))
    colors = plt.get_cmap("tab20").colors
    for index, row in enumerate(rows):
        xs, heights, errors = [], [], []
        for position, column in enumerate(columns):
            stat = row.cells.get(column.key)
            if stat is not None:
                xs.append(position - 0.4 + width * (index + 0.5))
                heights.append(stat.mean)
                errors.append(stat.std or 0.0)
        label = plain(row.method) + (f" ({row.marker})" if row.marker else "")
        ax.bar(xs, heights, width, yerr=errors if any(errors) else None, capsize=2, label=label,
               color=colors[index % len(colors)], hatch="//" if not row.full_protocol else None,
               edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(columns)), [f"{c.group}\n{c.header}".strip() for c in columns], fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(f"Table {table.spec.number} ({table.spec.name})", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="y", linewidth=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    _save(fig, path)


def _legend_label(group):
    label = plain(group.label)
    if group.variant:
        label += f" [{variant_setting(group.variant)}]"
    unfinished = [run for run in group.runs if not run.finished]
    if unfinished:
        seeds = [str(run.seed) for run in unfinished if run.seed is not None]
        label += f" (unfinished: seed {', '.join(seeds)})" if seeds and len(group.runs) > 1 else " (unfinished)"
    return label


def plot_curves(stage, groups, path):
    """One figure for ``stage`` (a curves.STAGES key): a panel per metric, a colour per group (label); each run
    thin (dashed when unfinished) around the group's mean over its seeds (bold, ``CurveGroup.mean``); a run
    averaged alone is drawn bold."""
    spec = curve_data.STAGES[stage]
    shown = curve_data.panels(stage, groups)
    columns = min(len(shown), 3)
    rows = math.ceil(len(shown) / columns)
    # Fixed margins in inches (a layout engine would cost more than all the drawing): title above, legend below.
    legend = 0.2 + 0.17 * len(groups)
    width, height = 3.7 * columns, 2.5 * rows + 0.45 + legend
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, top=1 - 0.5 / height,
                        bottom=(legend + 0.45) / height, wspace=0.3, hspace=0.55)
    colors = plt.get_cmap("tab10").colors
    handles = []
    for index, group in enumerate(groups):
        color = colors[index % len(colors)]
        for ax, (metric, _) in zip(axes.flat, shown):
            for run in group.runs:
                if metric in run.series:
                    xs, ys = run.series[metric]
                    ax.plot(xs, ys, color=color, linewidth=0.7, alpha=0.55, linestyle="-" if run.finished else "--",
                            marker="o" if len(xs) < 3 else None, markersize=3)
            averaged = group.averaged(metric)
            bold = group.mean(metric) or (averaged[0].series[metric] if len(averaged) == 1 else None)
            if bold:
                ax.plot(*bold, color=color, linewidth=2.0, linestyle="-" if averaged[0].finished else "--",
                        marker="o" if len(bold[0]) < 3 else None, markersize=4)
        handles.append(plt.Line2D([], [], color=color, linewidth=2.0, label=_legend_label(group)))
    for ax, (metric, axis) in zip(axes.flat, shown):
        ax.set_xlabel(spec.x, fontsize=8)
        low, high = ax.get_xlim()
        if high - low < 2:                      # one step only: give the integer ticks room
            ax.set_xlim((low + high) / 2 - 1, (low + high) / 2 + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(axis, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(linewidth=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.suptitle(spec.title, fontsize=10)
    fig.legend(handles=handles, loc="lower center", fontsize=7, frameon=False, ncols=1)
    _save(fig, path)
