"""The accuracy benchmarks' bookkeeping: which grid cells a resumed grid skips, and how a re-made
dense start point keeps the rows of the old one (benchmarks/accuracy_common.py)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from accuracy_common import is_done, start_point_id, write_results  # noqa: E402


def _dense_dir(tmp_path: Path, weights: bytes) -> Path:
    directory = tmp_path / "dense"
    directory.mkdir(exist_ok=True)
    (directory / "model.safetensors").write_bytes(weights)
    return directory


def test_dense_cell_is_done_only_with_its_weights_on_disk(tmp_path):
    missing = tmp_path / "absent"
    row = {"status": "done", "start_point": "dense_000000000000"}
    assert not is_done(row, missing)  # a fresh clone: the row is committed, the model is not
    directory = _dense_dir(tmp_path, b"weights")
    assert not is_done(row, directory)  # other weights than the row's
    assert is_done({**row, "start_point": start_point_id(directory)}, directory)
    assert not is_done({"status": "running: 1/2 epochs", "start_point": start_point_id(directory)}, directory)


def test_pruning_cell_is_done_when_its_row_finished_from_the_current_start_point(tmp_path):
    directory = _dense_dir(tmp_path, b"weights")
    current = start_point_id(directory)
    assert is_done({"status": "done", "start_point": current}, directory)
    assert not is_done({"status": "running: 3/8 epochs", "start_point": current}, directory)
    assert not is_done({}, directory)
    # from an earlier dense model: re-run, so that every cell of the table starts from the same weights
    assert not is_done({"status": "done", "start_point": "dense_000000000000"}, directory)
    assert not is_done({"status": "done", "start_point": current}, tmp_path / "absent")


def test_new_dense_start_point_archives_the_old_row_and_a_reproduced_one_keeps_one(tmp_path):
    path = tmp_path / "results.json"
    table = lambda results: ",".join(results)  # noqa: E731
    write_results(path, "dense", {"status": "done", "dev_acc": 0.70, "start_point": "dense_a"}, "rev", table)
    write_results(path, "prunelab_4x1_0.8", {"status": "done", "start_point": "dense_a"}, "rev", table)
    write_results(path, "dense", {"status": "done", "dev_acc": 0.75, "start_point": "dense_b"}, "rev", table)
    results = json.loads(path.read_text())
    assert results["dense_a"]["dev_acc"] == 0.70 and results["dense"]["dev_acc"] == 0.75
    assert set(results) == {"dense", "dense_a", "prunelab_4x1_0.8"}
    write_results(path, "dense", {"status": "done", "dev_acc": 0.75, "start_point": "dense_b"}, "rev", table)
    results = json.loads(path.read_text())
    assert set(results) == {"dense", "dense_a", "prunelab_4x1_0.8"}
    assert path.with_suffix(".md").read_text() == table(results)
