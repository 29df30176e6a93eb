"""The gradual benchmark's bookkeeping (benchmarks/gradual.py): which cells a restarted grid adopts
or waits for, and the paired figures its table reports."""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gradual import MRPC, SQUAD, Cell, write_table  # noqa: E402


def _args(tmp_path: Path, **overrides) -> argparse.Namespace:
    values = dict(work=tmp_path, data_root="/data", extra=[], jobs=1, dense_dir=tmp_path / "dense")
    return argparse.Namespace(**{**values, **overrides})


def _summary(directory: Path, status: str, overrides: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(json.dumps({"status": status, "overrides": overrides}))


def test_a_completed_run_of_the_same_command_is_adopted_and_no_other(tmp_path):
    cell = Cell("dense", 42, SQUAD, _args(tmp_path))
    assert cell.overrides == ["experiment=squad-minilm-dense", "data_root=/data", "seed=42", "progress_bar=false"]
    assert not cell.completed_before()  # nothing there
    _summary(cell.out, "running", cell.overrides)
    assert not cell.completed_before()  # died mid-run: run again
    _summary(cell.out, "completed", [*cell.overrides, "overwrite_output_dir=true"])
    assert cell.completed_before()  # how the driver itself launches it
    _summary(cell.out, "completed", [*cell.overrides[:-2], "seed=43", "progress_bar=false"])
    assert not cell.completed_before()


def test_a_squad_arm_waits_for_its_own_seeds_start_point(tmp_path):
    args = _args(tmp_path)
    arm = Cell("obs", 43, SQUAD, args)
    assert f"model.name_or_path={tmp_path / 'dense_seed43' / 'model'}" in arm.overrides
    (tmp_path / "dense_seed42" / "model").mkdir(parents=True)
    (tmp_path / "dense_seed42" / "model" / "model.safetensors").write_bytes(b"w")
    assert Cell("obs", 42, SQUAD, args).ready() and not arm.ready()
    assert Cell("dense", 43, SQUAD, args).ready()
    # MRPC's arms share one start point, given by --dense-dir
    assert f"model.name_or_path={tmp_path / 'dense'}" in Cell("gmp", 43, MRPC, args).overrides


def _row(arm: str, seed: int, f1: float, **more) -> dict:
    return {"arm": arm, "seed": seed, "status": "done", "extra": [], "dev_f1": f1, "dev_em": f1 - 10,
            "measured_sparsity": 0.9 if arm != "dense" else 0.0, "seconds_per_epoch": 1.0,
            "pruning_hook_seconds_per_epoch": 0.1, "peak_rss_mb": 100, "commit": "abc", "start_point": f"dense_{seed}", **more}


def test_squad_table_pairs_arms_per_seed_in_f1_points_against_each_seeds_dense_run(tmp_path):
    rows = {"dense_seed42": _row("dense", 42, 70.0), "dense_seed43": _row("dense", 43, 72.0),
            "obs_seed42": _row("obs", 42, 65.5), "obs_seed43": _row("obs", 43, 66.0),
            "snip_momentum_seed42": _row("snip_momentum", 42, 64.0), "snip_momentum_seed43": _row("snip_momentum", 43, 66.5)}
    path = tmp_path / "table.md"
    write_table(SQUAD, rows, path)
    text = path.read_text()
    assert "Dense level (eval/f1): 71.0000" in text  # the mean of the two seeds' own dense runs
    assert "| obs | 42,43 | 65.7500 (65.5000-66.0000) | 55.7500 |" in text
    assert "obs - snip_momentum, paired per seed (points): +1.50, -0.50; mean +0.50, paired t-test p 0.705" in text
