"""pruner=obs and pruning without training (num_train_epochs=0) through the app, on the tiny model."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from prunelab.app.run import run
from prunelab.app.schema import check_config, check_inert_overrides
from prunelab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
SMALL = ("task=sst2", "max_train_samples=96", "max_eval_samples=32")


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("pattern, target", [("4x1", 0.75), ("2:4", 0.5)])
def test_gradual_obs_run_reaches_its_target(make_config, tmp_path, pattern, target):
    cfg = make_config(*SMALL, "pruner=obs", f"pattern={pattern}", f"target_sparsity={target}", "num_train_epochs=2",
                      "pruning_frequency=4", "pruning.obs.num_grads=2", "pruning.obs.num_recomputations=2")
    run(cfg, tmp_path)
    summary = _summary(tmp_path)
    assert summary["status"] == "completed" and summary["pruning_type"] == "obs"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["pruning_s"] > 0 for line in lines)  # the hooks' own time, per epoch
    assert summary["sparsity"]["pruned_ops_sparsity"] == target
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    if pattern == "2:4":
        assert torch.equal((weight.view(-1, 4) == 0).sum(dim=1), torch.full((weight.numel() // 4,), 2))
    else:
        blocks = (weight == 0).view(weight.shape[0] // 4, 4, -1).sum(dim=1)
        assert set(blocks.unique().tolist()) == {0, 4}


def test_without_training_the_kept_weights_are_the_starting_ones(make_config, tmp_path):
    """num_train_epochs=0 with magnitude: the saved model is the start model with its smallest
    4x1 blocks zeroed and nothing else changed (no optimizer step ran)."""
    dense = tmp_path / "dense"
    run(make_config(*SMALL, "do_prune=false"), dense)
    start = AutoModelForSequenceClassification.from_pretrained(dense / "model").state_dict()
    pruned_dir = tmp_path / "pruned"
    cfg = make_config(*SMALL, "model=bert-mini", "model.name=tiny", f"model.name_or_path={dense / 'model'}", "pruner=magnitude", "scheduler=oneshot",
                      "num_train_epochs=0", "pattern=4x1", "target_sparsity=0.5")
    run(cfg, pruned_dir)
    pruned = AutoModelForSequenceClassification.from_pretrained(pruned_dir / "model").state_dict()
    summary = _summary(pruned_dir)
    assert summary["sparsity"]["pruned_ops_sparsity"] == 0.5
    for name, value in pruned.items():
        kept = value != 0
        assert torch.equal(value[kept], start[name][kept]), name
    lines = (pruned_dir / "metrics.jsonl").read_text().splitlines()
    assert [(json.loads(line)["epoch"], json.loads(line)["step"]) for line in lines] == [(0, 0)]


def test_obs_without_training_moves_kept_weights_and_improves_on_magnitude(make_config, tmp_path):
    """One-shot obs from a trained model, 8 gradient passes: weights move (the OBS correction),
    the eval loss ends below magnitude's at the same 1x1 sparsity."""
    dense = tmp_path / "dense"
    run(make_config(*SMALL, "do_prune=false", "num_train_epochs=4", "learning_rate=1e-3"), dense)
    results = {}
    for pruner in ("obs", "magnitude"):
        extra = ("pruning.obs.num_grads=8", "pruning.obs.damp=1e-4") if pruner == "obs" else ()
        out = tmp_path / pruner
        run(make_config(*SMALL, "model=bert-mini", "model.name=tiny", f"model.name_or_path={dense / 'model'}", f"pruner={pruner}", "scheduler=oneshot",
                        "num_train_epochs=0", "pattern=1x1", "target_sparsity=0.7", *extra), out)
        results[pruner] = json.loads((out / "metrics.jsonl").read_text())["eval/loss"]
        assert _summary(out)["sparsity"]["pruned_ops_sparsity"] == pytest.approx(0.7, abs=1e-5)  # within a weight
    assert results["obs"] < results["magnitude"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("num_train_epochs=0", "pruner=obs"), "num_train_epochs=0 prunes once without training: use scheduler=oneshot"),
        (("num_train_epochs=0", "scheduler=oneshot", "distill=kd"), "distill: a distiller has no effect with num_train_epochs=0"),
        (("num_train_epochs=0", "scheduler=oneshot", "quant=qat"), "quant: quantization-aware training has no effect with num_train_epochs=0"),
        (("num_train_epochs=0", "scheduler=oneshot", "checkpointing_steps=epoch"), "checkpointing_steps=epoch: has no effect"),
        (("pruner=obs", "pattern=head"), "does not prune coupled units"),
        (("pruner=obs", "pattern=4x1", "pruning.obs.block_size=50"), "obs.block_size=50 must be a multiple"),
    ],
)
def test_bad_combinations_are_refused_before_anything_loads(make_config, tmp_path, overrides, message):
    from prunelab.app.stages import check_pruning

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg = check_config(make_config(*SMALL, *overrides))
        check_pruning(cfg)
        run(cfg, tmp_path)


def test_training_keys_on_the_command_line_of_a_run_without_training_are_refused(make_config):
    overrides = ["num_train_epochs=0", "scheduler=oneshot", "learning_rate=1e-3"]
    with pytest.raises(ConfigError, match=r"^learning_rate=1e-3: has no effect with num_train_epochs=0"):
        check_inert_overrides(make_config(*overrides), overrides)


def test_two_processes_build_one_fisher_and_hold_the_same_masks(tiny_data_root, tmp_path):
    """torchrun, 2 processes: the Fisher comes from all-reduced gradients, so the masks agree
    (the app compares them at every evaluation and fails the run if they differ)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [TORCHRUN, "--nproc_per_node", "2", "-m", "prunelab", "model=tiny", "task=sst2",
            f"data_root={tiny_data_root}", "max_train_samples=96", "max_eval_samples=16", "max_length=32",
            "num_train_epochs=2", "per_device_train_batch_size=8", "learning_rate=1e-3", "pruner=obs",
            "pattern=1x1", "target_sparsity=0.6", "pruning_frequency=3", "pruning.obs.num_grads=3",
            "progress_bar=false", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(tmp_path)
    assert summary["status"] == "completed"
    assert summary["sparsity"]["pruned_ops_sparsity"] == pytest.approx(0.6, abs=1e-5)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # masks compared twice


def test_a_prune_taking_more_passes_than_the_training_set_has_batches_says_so(make_config, tmp_path):
    """8 gradient passes over 4 batches of 8: summary.json says each batch served twice; snip's
    single pass says nothing."""
    notes = {}
    for pruner, extra in (("obs", ("pruning.obs.num_grads=8",)), ("snip", ())):
        run(make_config("max_train_samples=32", f"pruner={pruner}", "scheduler=oneshot", "num_train_epochs=0",
                        "pattern=1x1", "target_sparsity=0.5", *extra), tmp_path / pruner)
        notes[pruner] = [n for n in _summary(tmp_path / pruner)["notes"] if n.startswith("the prune before training")]
    assert notes == {"snip": [], "obs": [
        "the prune before training takes 8 passes over training batches, but this process has 4 per epoch: each "
        "batch is used up to 2 times (reshuffled each epoch); the pruner's keys that set the passes "
        "(pruning.obs.num_grads, pruning.calibration_samples) give fewer"]}
