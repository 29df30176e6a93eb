"""PNG plots of a sweep: metric vs sparsity per pattern, and where one run put its zeros.

Each plot is a ``*_figure`` function returning the matplotlib Figure (what it shows can be read
back) and a ``plot_*`` function writing it as a PNG."""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prunelab.report.grouping import Row

# "<...>.layer.3.attention.self.query" (BERT), "transformer.h.0.attn.c_attn" (GPT-2), "blocks.2.mlp"
LAYER_OP = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")
NO_LAYER = "other"
EXCLUDED = -1.0  # grid value of an op the pruner left out (drawn grey, labelled "excl.")
MAX_ANNOTATED_CELLS = 400
RATIO = "linear_conv_sparsity"  # the x axis: measured zeros over all Linear/Conv weights


def slug(*parts: object) -> str:
    """A file-name-safe join: ``("bert-mini", "2:4", 0.5)`` -> ``bert-mini_2-4_0.5``."""
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(part)).strip("-") for part in parts if part is not None)


def _figure(width: float, height: float):
    """A figure drawn by the Agg canvas: PNG files without pyplot, so no display is needed and the
    caller's own matplotlib backend is left alone."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def op_sparsity_grid(ops: dict[str, dict], unpruned_ops: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(row labels = layer indices, column labels = op names without the layer prefix, sparsity grid).

    Cells with no such op hold NaN; excluded ops hold EXCLUDED. Ops outside numbered layers (a
    classifier, a pooler) go to a last row named "other" under their full name.
    """
    cells: dict[tuple[str, str], float] = {}
    for name, value in [(name, op["sparsity"]) for name, op in ops.items()] + [(n, EXCLUDED) for n in unpruned_ops]:
        match = LAYER_OP.search(name)
        cells[(match.group(1), match.group(2)) if match else (NO_LAYER, name)] = float(value)
    layers = sorted({row for row, _ in cells if row != NO_LAYER}, key=int)
    rows = layers + ([NO_LAYER] if any(row == NO_LAYER for row, _ in cells) else [])
    columns = list(dict.fromkeys(column for _, column in cells))
    grid = np.full((len(rows), len(columns)), np.nan)
    for (row, column), value in cells.items():
        grid[rows.index(row), columns.index(column)] = value
    return rows, columns, grid


def plot_op_sparsity(summary: dict, path: Path) -> Path:
    """``op_sparsity_figure`` written as a PNG at ``path``."""
    op_sparsity_figure(summary).savefig(path, dpi=110)
    return path


def op_sparsity_figure(summary: dict) -> Figure:
    """Heat map of one run's per-op sparsity: layer index down, op name across."""
    sparsity = summary["sparsity"]
    rows, columns, grid = op_sparsity_grid(sparsity["ops"], sparsity.get("unpruned_ops", []))
    if not rows:
        raise ValueError(f"summary of {summary.get('output_dir')} has no ops under sparsity.ops to plot")
    shown = np.ma.masked_where(~(grid >= 0), grid)  # NaN and EXCLUDED drawn as "bad" (grey)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    fig, ax = _figure(2.0 + 1.1 * len(columns), 1.6 + 0.45 * len(rows))
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="sparsity (zeros / weights)")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("op (layer prefix stripped)")
    ax.set_ylabel("layer")
    if grid.size <= MAX_ANNOTATED_CELLS:
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                label = "excl." if value == EXCLUDED else f"{value:.2f}"
                ax.text(j, i, label, ha="center", va="center", fontsize=7,
                        color="black" if value == EXCLUDED or value > 0.6 else "white")
    ax.set_title(
        f"{summary.get('model')} {summary.get('task')} {summary.get('pattern')} "
        f"target {summary.get('target_sparsity')} seed {summary.get('seed')}\n"
        f"linear/conv sparsity {sparsity.get(RATIO, math.nan):.4f}, "
        f"pruned ops {sparsity.get('pruned_ops_sparsity', math.nan):.4f}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_metric_vs_sparsity(rows: list[Row], path: Path) -> Path:
    """``metric_vs_sparsity_figure`` written as a PNG at ``path``."""
    metric_vs_sparsity_figure(rows).savefig(path, dpi=110)
    return path


def metric_vs_sparsity_figure(rows: list[Row]) -> Figure:
    """Main metric against measured sparsity for the rows of one model and task: a line per
    pattern through the seed means (seeds as dots), the dense mean as a horizontal line. The y
    axis runs as the values do; its label says so where lower is better (a perplexity rising
    with sparsity would otherwise read as a gain)."""
    first = rows[0].main
    fig, ax = _figure(6.4, 4.4)
    sparse = [row.sparse for row in rows if row.sparse and row.sparse.runs]
    for pattern in dict.fromkeys(group.pattern for group in sparse):
        groups = sorted((group for group in sparse if group.pattern == pattern),
                        key=lambda group: group.sparsity_mean(RATIO))
        line, = ax.plot([group.sparsity_mean(RATIO) for group in groups], [group.mean for group in groups],
                        marker="o", label=f"{pattern} (mean)")
        runs = [job for group in groups for job in group.runs]
        ax.scatter([job.summary["sparsity"].get(RATIO, math.nan) for job in runs], [job.metric for job in runs],
                   color=line.get_color(), alpha=0.35, s=14)
    dense = next((row.dense for row in rows if row.dense and row.dense.runs), None)
    if dense is not None:
        ax.axhline(dense.mean, color="black", linestyle="--", label=f"dense (mean, n={dense.n})")
    extras = ", ".join(f"{key}={value}" for key, value in first.extras)
    ax.set_title(f"{first.model} on {first.task}" + (f" ({extras})" if extras else ""))
    ax.set_xlabel("measured sparsity of Linear/Conv weights")
    ax.set_ylabel(first.metric_name + ("" if first.greater_is_better else " (lower is better)"))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    """One metric-vs-sparsity plot per (model, task, extras) and one heat map per sparse row
    (its first completed seed). Rows without a completed run have nothing to plot."""
    paths = []
    families: dict[tuple, list[Row]] = {}
    for row in rows:
        group = row.main
        families.setdefault((group.model, group.task, group.main_metric, group.extras), []).append(row)
    for (model, task, _, extras), family in families.items():
        if any(group and group.runs for row in family for group in (row.sparse, row.dense)):
            name = slug("metric_vs_sparsity", model, task, *(value for _, value in extras))
            paths.append(plot_metric_vs_sparsity(family, out_dir / f"{name}.png"))
    for row in rows:
        if row.sparse and row.sparse.runs:
            group = row.sparse
            name = slug("op_sparsity", group.model, group.task, group.pattern, group.target_sparsity,
                        *(value for _, value in group.extras))
            paths.append(plot_op_sparsity(group.runs[0].summary, out_dir / f"{name}.png"))
    return paths
