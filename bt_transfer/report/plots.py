"""PNG plots of the report: grouped bars per table, the pretraining loss curve.

Matplotlib with the Agg backend (no display needed). PNGs carry no Software/date metadata, so the same
inputs give byte-identical files.
"""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from bt_transfer.core.fileio import atomic_write  # noqa: E402

PNG_METADATA = {"Software": None}   # matplotlib otherwise stamps its version into every file


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
        label = row.method + (f" ({row.marker})" if row.marker else "")
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


def plot_losses(curves, path):
    """``curves``: [(label, steps, losses)], one line each: the Barlow Twins loss during pretraining."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for label, steps, losses in curves:
        ax.plot(steps, losses, linewidth=1.0, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("Barlow Twins loss")
    ax.set_title("Pretraining loss", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    ax.grid(linewidth=0.3)
    fig.tight_layout()
    _save(fig, path)
