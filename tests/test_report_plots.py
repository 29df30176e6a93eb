"""Plots of the sweep report: the layer x op grid behind the heat map, what each plot shows (read back
from its matplotlib Figure), and the PNG files."""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from prunelab.report.grouping import Group, Row
from prunelab.report.jobs import COMPLETED, Job
from prunelab.report.plots import (EXCLUDED, metric_vs_sparsity_figure, op_sparsity_figure, op_sparsity_grid,
                                   plot_op_sparsity, slug, write_plots)


def _ops(names_and_sparsity: dict[str, float]) -> dict[str, dict]:
    return {name: {"shape": [8, 8], "numel": 64, "zeros": round(64 * s), "sparsity": s, "pattern": "4x1", "group": 0}
            for name, s in names_and_sparsity.items()}


def test_bert_ops_become_layer_rows_and_op_columns():
    ops = _ops({"bert.encoder.layer.10.attention.self.query": 0.9, "bert.encoder.layer.2.attention.self.query": 0.5,
                "bert.encoder.layer.2.intermediate.dense": 0.7, "bert.encoder.layer.10.output.dense": 0.1})
    rows, columns, grid = op_sparsity_grid(ops, ["bert.encoder.layer.2.output.dense", "classifier"])
    assert rows == ["2", "10", "other"]  # numeric order, not string order
    assert columns == ["attention.self.query", "intermediate.dense", "output.dense", "classifier"]
    expected = np.array([[0.5, 0.7, EXCLUDED, np.nan],
                         [0.9, np.nan, 0.1, np.nan],
                         [np.nan, np.nan, np.nan, EXCLUDED]])
    np.testing.assert_array_equal(grid, expected)


@pytest.mark.parametrize("name, row, column", [
    ("distilbert.transformer.layer.5.ffn.lin1", "5", "ffn.lin1"),
    ("transformer.h.11.attn.c_attn", "11", "attn.c_attn"),
    ("model.layers.0.self_attn.q_proj", "0", "self_attn.q_proj"),
])
def test_layer_index_is_found_in_other_architectures(name: str, row: str, column: str):
    rows, columns, grid = op_sparsity_grid(_ops({name: 0.25}), [])
    assert (rows, columns, grid.tolist()) == ([row], [column], [[0.25]])


def test_slug_makes_file_names():
    assert slug("op_sparsity", "bert-mini", "2:4", 0.5, None) == "op_sparsity_bert-mini_2-4_0.5"


def _group(do_prune: bool, pattern: str | None, target: float | None, metrics: list[float], tmp_path: Path,
           metric: str = "accuracy", greater_is_better: bool = True) -> Group:
    group = Group("tiny", "mrpc", "glue", f"eval/{metric}", do_prune, pattern, target, (), greater_is_better)
    for seed, value in enumerate(metrics):
        ops = _ops({f"bert.encoder.layer.{layer}.{op}": (target or 0.0) * (layer + 1) / 2
                    for layer in range(2) for op in ("attention.self.query", "output.dense")})
        summary = {"model": "tiny", "task": "mrpc", "pattern": pattern, "target_sparsity": target, "seed": seed,
                   "main_metric": f"eval/{metric}", "metrics": {f"eval/{metric}": value},
                   "sparsity": {"ops": ops if do_prune else {}, "unpruned_ops": [],
                                "linear_conv_sparsity": (target or 0.0) * 0.9, "pruned_ops_sparsity": target or 0.0}}
        group.runs.append(Job(tmp_path / f"{pattern}-{target}-{seed}", [], COMPLETED, summary))
    return group


def _sweep(tmp_path: Path) -> list[Row]:
    """4x1 at 0.5 and 0.8 (two seeds each), 2:4 at 0.5 (one seed), all beside a dense pair (0.80, 0.82)."""
    dense = _group(False, None, None, [0.80, 0.82], tmp_path)
    rows = [Row(_group(True, "4x1", target, [0.8 - target / 4, 0.81 - target / 4], tmp_path), dense)
            for target in (0.5, 0.8)]
    rows.append(Row(_group(True, "2:4", 0.5, [0.79], tmp_path), dense))
    return rows


def test_metric_vs_sparsity_draws_a_line_per_pattern_through_the_seed_means(tmp_path: Path):
    ax = metric_vs_sparsity_figure(_sweep(tmp_path)).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["4x1 (mean)", "2:4 (mean)", "dense (mean, n=2)"]
    # x: measured Linear/Conv sparsity (0.9 x target in these summaries); y: the seeds' mean metric.
    np.testing.assert_allclose(lines["4x1 (mean)"].get_xydata(), [[0.45, (0.675 + 0.685) / 2], [0.72, (0.6 + 0.61) / 2]])
    np.testing.assert_allclose(lines["2:4 (mean)"].get_xydata(), [[0.45, 0.79]])
    np.testing.assert_allclose(lines["dense (mean, n=2)"].get_ydata(), [0.81, 0.81])
    # Every seed a dot, in its pattern's colour.
    dots = ax.collections
    assert len(dots) == 2
    np.testing.assert_allclose(dots[0].get_offsets(), [[0.45, 0.675], [0.45, 0.685], [0.72, 0.6], [0.72, 0.61]])
    np.testing.assert_allclose(dots[1].get_offsets(), [[0.45, 0.79]])
    for collection, line in zip(dots, lines.values()):
        assert matplotlib.colors.same_color(collection.get_facecolor()[0][:3], line.get_color())
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "tiny on mrpc", "measured sparsity of Linear/Conv weights", "accuracy")
    assert [text.get_text() for text in ax.get_legend().get_texts()] == list(lines)


def test_a_lower_is_better_metric_is_labelled_so(tmp_path: Path):
    dense = _group(False, None, None, [20.0, 22.0], tmp_path, "perplexity", greater_is_better=False)
    sparse = _group(True, "4x1", 0.5, [30.0, 27.0], tmp_path, "perplexity", greater_is_better=False)
    ax = metric_vs_sparsity_figure([Row(sparse, dense)]).axes[0]
    assert ax.get_ylabel() == "perplexity (lower is better)"
    assert [line.get_ydata()[0] for line in ax.get_lines()] == pytest.approx([28.5, 21.0])  # means, not a best


def test_heat_map_shows_each_op_s_sparsity_in_its_layer_row(tmp_path: Path):
    summary = _group(True, "4x1", 0.5, [0.7], tmp_path).runs[0].summary  # layer 0 at 0.25, layer 1 at 0.5
    summary["sparsity"]["unpruned_ops"] = ["classifier"]
    fig = op_sparsity_figure(summary)
    ax, colorbar = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attention.self.query", "output.dense", "classifier"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "other"]
    shown = ax.get_images()[0].get_array()
    # Cells without an op, and the excluded classifier, are masked (drawn grey).
    np.testing.assert_array_equal(shown.mask, [[False, False, True], [False, False, True], [True, True, True]])
    np.testing.assert_array_equal(shown.data[:2, :2], [[0.25, 0.25], [0.5, 0.5]])
    assert ax.get_images()[0].get_clim() == (0.0, 1.0)
    labels = {(text.get_position(), text.get_text()) for text in ax.texts}
    assert labels == {((0, 0), "0.25"), ((1, 0), "0.25"), ((0, 1), "0.50"), ((1, 1), "0.50"), ((2, 2), "excl.")}
    assert ax.get_title() == "tiny mrpc 4x1 target 0.5 seed 0\nlinear/conv sparsity 0.4500, pruned ops 0.5000"
    assert (ax.get_xlabel(), ax.get_ylabel(), colorbar.get_ylabel()) == (
        "op (layer prefix stripped)", "layer", "sparsity (zeros / weights)")


def _rendered(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    buffer.seek(0)
    return matplotlib.image.imread(buffer, format="png")


def test_write_plots_writes_one_curve_plot_and_a_heat_map_per_sparse_row(tmp_path: Path):
    rows = _sweep(tmp_path)
    paths = write_plots(rows, tmp_path)
    assert [path.name for path in paths] == [
        "metric_vs_sparsity_tiny_mrpc.png", "op_sparsity_tiny_mrpc_4x1_0.5.png",
        "op_sparsity_tiny_mrpc_4x1_0.8.png", "op_sparsity_tiny_mrpc_2-4_0.5.png"]
    # Each file is its figure: the curves of the whole family, the heat map of the row's first seed.
    figures = [metric_vs_sparsity_figure(rows)] + [op_sparsity_figure(row.sparse.runs[0].summary) for row in rows]
    for path, fig in zip(paths, figures):
        np.testing.assert_array_equal(matplotlib.image.imread(path), _rendered(fig))


def test_heat_map_of_a_summary_without_ops_is_a_clear_error(tmp_path: Path):
    summary = {"output_dir": "runs/x", "sparsity": {"ops": {}, "unpruned_ops": [], "linear_conv_sparsity": math.nan}}
    with pytest.raises(ValueError, match="runs/x has no ops under sparsity.ops"):
        plot_op_sparsity(summary, tmp_path / "x.png")
