"""Plots of the sweep report: the layer x op grid behind the heat map, and the PNG files."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from prunelab.report.grouping import Group, Row
from prunelab.report.jobs import COMPLETED, Job
from prunelab.report.plots import EXCLUDED, op_sparsity_grid, plot_op_sparsity, slug, write_plots


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


def _group(do_prune: bool, pattern: str | None, target: float | None, metrics: list[float], tmp_path: Path) -> Group:
    group = Group("tiny", "mrpc", "glue", "eval/accuracy", do_prune, pattern, target, ())
    for seed, metric in enumerate(metrics):
        ops = _ops({f"bert.encoder.layer.{layer}.{op}": (target or 0.0) * (layer + 1) / 2
                    for layer in range(2) for op in ("attention.self.query", "output.dense")})
        summary = {"model": "tiny", "task": "mrpc", "pattern": pattern, "target_sparsity": target, "seed": seed,
                   "main_metric": "eval/accuracy", "metrics": {"eval/accuracy": metric},
                   "sparsity": {"ops": ops if do_prune else {}, "unpruned_ops": [],
                                "linear_conv_sparsity": (target or 0.0) * 0.9, "pruned_ops_sparsity": target or 0.0}}
        group.runs.append(Job(tmp_path / f"{pattern}-{target}-{seed}", [], COMPLETED, summary))
    return group


def _png_shape(path: Path) -> tuple[int, ...]:
    assert path.is_file() and path.stat().st_size > 1000
    return matplotlib.image.imread(path).shape


def test_write_plots_makes_one_curve_plot_and_a_heat_map_per_sparse_row(tmp_path: Path):
    dense = _group(False, None, None, [0.80, 0.82], tmp_path)
    rows = [Row(_group(True, "4x1", target, [0.8 - target / 4, 0.81 - target / 4], tmp_path), dense)
            for target in (0.5, 0.8)]
    rows.append(Row(_group(True, "2:4", 0.5, [0.79], tmp_path), dense))
    paths = write_plots(rows, tmp_path)
    assert [path.name for path in paths] == [
        "metric_vs_sparsity_tiny_mrpc.png", "op_sparsity_tiny_mrpc_4x1_0.5.png",
        "op_sparsity_tiny_mrpc_4x1_0.8.png", "op_sparsity_tiny_mrpc_2-4_0.5.png"]
    height, width, _ = _png_shape(paths[0])
    assert height > 300 and width > 500
    heat_height, _, _ = _png_shape(paths[1])
    assert heat_height > 150


def test_heat_map_of_a_summary_without_ops_is_a_clear_error(tmp_path: Path):
    summary = {"output_dir": "runs/x", "sparsity": {"ops": {}, "unpruned_ops": [], "linear_conv_sparsity": math.nan}}
    with pytest.raises(ValueError, match="runs/x has no ops under sparsity.ops"):
        plot_op_sparsity(summary, tmp_path / "x.png")
