"""One-shot post-training pruning from calibration inputs: pruning_type wanda and sparsegpt.

The engine's masks and weights against straightforward loop implementations of the papers'
algorithms, SparseGPT's reconstruction error against Wanda's and magnitude's, the 2:4 invariant,
how calibration inputs are gathered (examples counted, padding left out), the refusals, and
end-to-end app runs on the tiny model with and without fine-tuning."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

import prunelab
from prunelab.app.run import run
from prunelab.app.schema import check_config
from prunelab.errors import ConfigError
from prunelab.sparsity import hessian

SMALL = ("task=sst2", "max_train_samples=64", "max_eval_samples=32")
REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


class Layer(nn.Module):
    """One Linear behind a model-level forward that takes an attention mask, as HF models do."""

    def __init__(self, rows: int, cols: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(cols, rows)

    def forward(self, x, attention_mask=None):
        return self.linear(x)


def _batches(cols: int, seed: int, count: int = 4, batch: int = 6, tokens: int = 10):
    """``(x [batch, tokens, cols], attention_mask [batch, tokens])`` with padded tails full of
    large values (they must not count) and correlated, unevenly scaled features."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.eye(cols) + 0.4 * torch.randn(cols, cols, generator=generator)
    scale = 0.3 + 2 * torch.rand(cols, generator=generator)
    found = []
    for _ in range(count):
        x = (torch.randn(batch, tokens, cols, generator=generator) @ mixing) * scale
        lengths = torch.randint(3, tokens + 1, (batch,), generator=generator)
        mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).long()
        x[mask == 0] = 1e3
        found.append((x, mask))
    return found


def _real_inputs(batches, examples: int) -> torch.Tensor:
    """The tokens a calibration of ``examples`` examples sees: ``[tokens, cols]`` float64."""
    rows = []
    for x, mask in batches:
        for b in range(x.shape[0]):
            if examples == 0:
                return torch.cat(rows)
            examples -= 1
            rows.append(x[b][mask[b] == 1].double())
    return torch.cat(rows)


def _prune(model, batches, criterion: str, pattern: str, sparsity: float, samples: int, **extra):
    steps = len(batches)
    config = {"pruning_type": criterion, "pattern": pattern, "target_sparsity": sparsity, "start_step": steps,
              "end_step": steps, "excluded_op_names": [], "calibration_samples": samples, **extra}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    for step in range(steps + 1):
        pruning.on_step_begin(step)
        if step < steps:
            with torch.no_grad():
                model(batches[step][0], attention_mask=batches[step][1])
        pruning.on_before_optimizer_step()
        pruning.on_after_optimizer_step()
    pruning.on_train_end()
    return pruning


# ------------------------------------------------------------------------------ references
def _reference_wanda(weight: torch.Tensor, x: torch.Tensor, sparsity: float, n_m) -> torch.Tensor:
    """Keep mask, one row (or one group of M) at a time."""
    rows, cols = weight.shape
    norms = [math.sqrt(sum(float(x[t, j]) ** 2 for t in range(x.shape[0]))) for j in range(cols)]
    keep = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        score = [abs(float(weight[r, j])) * norms[j] for j in range(cols)]
        spans = [range(g, g + n_m[1]) for g in range(0, cols, n_m[1])] if n_m else [range(cols)]
        for span in spans:
            count = n_m[0] if n_m else round(sparsity * cols)
            for j in sorted(span, key=lambda j: score[j])[:count]:
                keep[r, j] = False
    return keep


def _reference_sparsegpt(weight, x, sparsity, n_m, block_size, damp):
    """The paper's Algorithm 1 with per-row mask selection, in float64, weight by weight."""
    w = weight.double().clone()
    rows, cols = w.shape
    h = 2 * x.t() @ x / x.shape[0]
    h += damp * torch.diag(h).mean() * torch.eye(cols, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for first in range(0, cols, block_size):
        last = min(first + block_size, cols)
        block, errors = w[:, first:last].clone(), torch.zeros(rows, last - first, dtype=torch.float64)
        for r in range(rows):
            if n_m is None:
                saliency = [float(block[r, j] ** 2 / u[first + j, first + j] ** 2) for j in range(last - first)]
                count = round(sparsity * last) - round(sparsity * first)
                for j in sorted(range(last - first), key=lambda j: saliency[j])[:count]:
                    pruned[r, first + j] = True
        for i in range(last - first):
            for r in range(rows):
                if n_m is not None and i % n_m[1] == 0:
                    group = range(i, i + n_m[1])
                    saliency = {j: float(block[r, j] ** 2 / u[first + j, first + j] ** 2) for j in group}
                    for j in sorted(group, key=lambda j: saliency[j])[: n_m[0]]:
                        pruned[r, first + j] = True
                if pruned[r, first + i]:
                    error = block[r, i] / u[first + i, first + i]
                    for j in range(i, last - first):
                        block[r, j] -= error * u[first + i, first + j]
                    errors[r, i] = error
                    block[r, i] = 0.0
        w[:, first:last] = block
        w[:, last:] -= errors @ u[first:last, last:]
    return w, ~pruned


# ---------------------------------------------------------------------------------- engine
@pytest.mark.parametrize("pattern, n_m", [("1x1", None), ("2:4", (2, 4))])
def test_wanda_masks_equal_the_reference_and_leave_kept_weights_alone(pattern, n_m):
    batches = _batches(24, seed=1)
    model = Layer(8, 24, seed=2)
    start = model.linear.weight.detach().clone()
    _prune(model, batches, "wanda", pattern, 0.5, samples=15)
    keep = _reference_wanda(start, _real_inputs(batches, 15), 0.5, n_m)
    weight = model.linear.weight.detach()
    assert torch.equal(weight != 0, keep)
    assert torch.equal(weight[keep], start[keep])


@pytest.mark.parametrize("pattern, n_m, sparsity", [("1x1", None, 0.6), ("2:4", (2, 4), 0.5)])
def test_sparsegpt_masks_and_weights_equal_the_reference(pattern, n_m, sparsity):
    batches = _batches(24, seed=3)
    model = Layer(8, 24, seed=4)
    start = model.linear.weight.detach().clone()
    pruning = _prune(model, batches, "sparsegpt", pattern, sparsity, samples=20, sparsegpt={"block_size": 8, "damp": 0.01})
    expected, keep = _reference_sparsegpt(start, _real_inputs(batches, 20), sparsity, n_m, 8, 0.01)
    weight = model.linear.weight.detach()
    assert torch.equal(weight != 0, keep)
    assert torch.allclose(weight.double(), expected, atol=1e-4)
    assert pruning.report()["pruned_ops_sparsity"] == round(sparsity * 24) / 24  # every row: round(0.6 * 24) = 14


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_sparsegpt_reconstructs_the_outputs_better_than_wanda_and_magnitude(n_m):
    generator = torch.Generator().manual_seed(5)
    cols = 128
    weight = torch.randn(32, cols, generator=generator)
    x = (torch.randn(1024, cols, generator=generator) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=generator)))
    x *= 0.3 + 2 * torch.rand(cols, generator=generator)
    gram = x.t() @ x
    sparse, _ = hessian.sparsegpt(weight, gram, x.shape[0], 0.5, n_m)
    wanda = weight * hessian.wanda_mask(weight, x.square().sum(dim=0), 0.5, n_m)
    magnitude = weight * hessian.wanda_mask(weight, torch.ones(cols), 0.5, n_m)  # |W| per row / group
    errors = {name: hessian.reconstruction_error(weight, pruned, gram) for name, pruned in
              (("sparsegpt", sparse), ("wanda", wanda), ("magnitude", magnitude))}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    direct = float(((weight.double() - sparse.double()) @ x.double().t()).square().sum())
    assert errors["sparsegpt"] == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_2_4_every_group_of_four_loses_exactly_two(criterion):
    batches = _batches(32, seed=6)
    model = Layer(16, 32, seed=7)
    pruning = _prune(model, batches, criterion, "2:4", 0.5, samples=24)
    zeros = (model.linear.weight.detach() == 0).view(16, 8, 4).sum(dim=2)
    assert torch.equal(zeros, torch.full((16, 8), 2))
    assert pruning.report()["pruned_ops_sparsity"] == 0.5
    assert not pruning.needs_gradients


def test_calibration_counts_examples_and_leaves_padding_out():
    """calibration_samples=10 over batches of 6: the first 6 and 4 of the next; padded positions
    (filled with 1e3) never reach the statistic."""
    batches = _batches(12, seed=8)
    model = Layer(4, 12, seed=9)
    config = {"pruning_type": "sparsegpt", "pattern": "1x1", "target_sparsity": 0.5, "start_step": 3, "end_step": 3,
              "excluded_op_names": [], "calibration_samples": 10}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    for step in range(3):
        pruning.on_step_begin(step)
        with torch.no_grad():
            model(batches[step][0], attention_mask=batches[step][1])  # the keyword, as model(**batch) passes it
        pruning.on_before_optimizer_step()
        pruning.on_after_optimizer_step()
    group = pruning.groups[0]
    x = _real_inputs(batches, 10)
    assert group.examples == 10 and group.tokens["linear"] == x.shape[0]
    assert torch.allclose(group.statistics["linear"].double(), x.t() @ x, rtol=1e-5)
    pruning.on_step_begin(3)  # the update: hooks removed, statistics dropped
    assert group.statistics == {} and not model.linear._forward_hooks and not model._forward_pre_hooks


def test_masks_stay_through_training_after_the_one_shot_update():
    batches = _batches(16, seed=10)
    model = Layer(8, 16, seed=11)
    pruning = _prune(model, batches, "wanda", "1x1", 0.5, samples=24)
    zeros = model.linear.weight.detach() == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, mask in batches:  # training after the update: no new update, pruned weights stay zero
        pruning.on_step_begin()
        model(x.clamp(-5, 5), attention_mask=mask).square().mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    assert torch.equal(model.linear.weight.detach() == 0, zeros)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"end_step": 10}, r"pruning_type='wanda' prunes once from calibration inputs: it needs a one-shot schedule"),
        ({"start_step": 0, "end_step": 0}, r"start_step must be >= 1"),
        ({"pattern": "4x1"}, r"pattern='4x1': pruning_type='wanda' chooses weights within each output row"),
        ({"pattern": "2:4", "target_sparsity": 0.3}, r"target_sparsity=0.3: .* the target is 2/4=0.5"),
        ({"pruning_type": "wanda_progressive", "end_step": 10, "pruning_frequency": 2}, r"progressive blend"),
        ({"pruning_type": "sparsegpt", "pattern": "2:4", "sparsegpt": {"block_size": 6}}, r"sparsegpt.block_size=6 must be a multiple of M=4"),
        ({"pruning_type": "sparsegpt", "sparsegpt": {"damp": 0}}, r"sparsegpt.damp=0 must be a number > 0"),
        ({"pruning_type": "sparsegpt", "sparsegpt": {"blocks": 6}}, r"unknown key sparsegpt.blocks"),
        ({"sparsegpt": {"damp": 0.1}}, r"sparsegpt: has no effect with pruning_type='wanda'"),
        ({"calibration_samples": 0}, r"calibration_samples=0 is out of range"),
        ({"pruning_type": "magnitude", "calibration_samples": 8}, r"calibration_samples: has no effect with pruning_type='magnitude'"),
        ({"pruning_op_types": ["Linear", "Conv2d"]}, r"prunes Linear and Conv1D ops .* not Conv2d"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(extra, message):
    config = {"pruning_type": "wanda", "pattern": "1x1", "target_sparsity": 0.5, "start_step": 2, "end_step": 2, **extra}
    with pytest.raises(ValueError, match=message):
        prunelab.sparsity.parse_config(config)


def test_calibration_steps_count_batches_of_examples():
    config = prunelab.sparsity.parse_config({"pruning_type": "sparsegpt", "pattern": "1x1", "target_sparsity": 0.5,
                                             "start_step": 1, "end_step": 1, "calibration_samples": 100})
    assert prunelab.sparsity.calibration_steps(config, 16) == 7
    default = prunelab.sparsity.parse_config({"pruning_type": "wanda", "pattern": "1x1", "target_sparsity": 0.5,
                                              "start_step": 1, "end_step": 1})
    assert prunelab.sparsity.calibration_steps(default, 32) == 8  # 256 examples


# ------------------------------------------------------------------------------------- app
def _zeros(directory) -> dict[str, torch.Tensor]:
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    return {name: p.detach() == 0 for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 2
            and "encoder" in name}


def test_app_prunes_before_training_and_fine_tuning_keeps_the_masks(make_config, tmp_path):
    """num_train_epochs=0 and 1 epoch with KD from the dense model: the same calibration batches,
    so the same masks; after fine-tuning the zeros are exactly those of the one-shot prune."""
    common = (*SMALL, "pruner=sparsegpt", "scheduler=oneshot", "pattern=2:4", "pruning.calibration_samples=20")
    run(make_config(*common, "num_train_epochs=0"), tmp_path / "oneshot")
    run(make_config(*common, "num_train_epochs=1", "distill=kd", "learning_rate=1e-3"), tmp_path / "tuned")
    for name in ("oneshot", "tuned"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["pruning_type"] == "sparsegpt"
        assert summary["sparsity"]["pruned_ops_sparsity"] == 0.5
    oneshot, tuned = _zeros(tmp_path / "oneshot" / "model"), _zeros(tmp_path / "tuned" / "model")
    assert oneshot.keys() == tuned.keys() and len(oneshot) == 12  # 2 layers x 6 Linear ops
    for name in oneshot:
        assert torch.equal(oneshot[name], tuned[name]), name
        assert torch.equal(oneshot[name].view(-1, 4).sum(dim=1), torch.full((oneshot[name].numel() // 4,), 2))
    lines = (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [8]  # 64 examples / 8: the training steps alone


def test_app_wanda_without_training_prunes_every_row_to_the_target(make_config, tmp_path):
    run(make_config(*SMALL, "pruner=wanda", "scheduler=oneshot", "pattern=1x1", "target_sparsity=0.5",
                    "num_train_epochs=0"), tmp_path)
    for name, zeros in _zeros(tmp_path / "model").items():
        assert torch.equal(zeros.sum(dim=1), torch.full((zeros.shape[0],), zeros.shape[1] // 2)), name


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("pruner=wanda",), r"^scheduler: pruner=wanda \(it prunes once, from calibration passes, before training\) needs scheduler=oneshot"),
        (("pruner=sparsegpt", "num_train_epochs=0"), r"^scheduler: pruner=sparsegpt .* needs scheduler=oneshot"),
        (("pruner=wanda", "scheduler=oneshot", "sparsity_warm_epochs=1"), r"^sparsity_warm_epochs=1.*: has no effect with pruner=wanda"),
        (("pruner=sparsegpt", "scheduler=oneshot", "pruning.sparsegpt.damp=-1"), r"^pruning: sparsegpt.damp=-1 must be a number > 0"),
        (("pruner=wanda", "scheduler=oneshot", "pruning.calibration_samples=0"), r"^pruning: calibration_samples=0 is out of range"),
        (("pruner=wanda", "scheduler=oneshot", "pattern=4x1"), r"^pruning: pattern='4x1': pruning_type='wanda'"),
        (("pruner=sparsegpt", "scheduler=oneshot", "progressive=true"), r"^pruning: pruning_type='sparsegpt_progressive'"),
    ],
)
def test_bad_app_settings_are_refused_before_anything_loads(make_config, overrides, message):
    from prunelab.app.stages import check_pruning

    with pytest.raises(ConfigError, match=message):
        check_pruning(check_config(make_config(*SMALL, "pattern=1x1", "target_sparsity=0.5", *overrides)))


@pytest.mark.parametrize("sequential", ["false", "true"])
def test_two_processes_sum_their_inputs_and_hold_the_same_masks(tiny_data_root, tmp_path, sequential):
    """torchrun, 2 processes: each gathers half the calibration examples, the statistics are summed
    before the prune (sequential: layer by layer), so the masks agree (the app compares them at
    every evaluation)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [TORCHRUN, "--nproc_per_node", "2", "-m", "prunelab", "model=tiny", "task=sst2",
            f"data_root={tiny_data_root}", "max_train_samples=64", "max_eval_samples=16", "max_length=32",
            "num_train_epochs=1", "per_device_train_batch_size=8", "pruner=sparsegpt", "scheduler=oneshot",
            "pattern=1x1", "target_sparsity=0.5", "pruning.calibration_samples=32", "progress_bar=false",
            f"pruning.sequential={sequential}", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["sparsity"]["pruned_ops_sparsity"] == 0.5
