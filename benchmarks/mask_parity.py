"""Mask parity: prunelab's engine and INC 2.6's pruner fed the same hook sequence and the same
gradients must choose the same weights.

Both prune a copy of one small BERT (built from a config, seeded). Every step gives both copies
identical synthetic gradients and an identical SGD update, so any difference in the pruned weights
comes from the pruners alone. Printed per case: the largest number of weights the two masks
disagree on at any update, and the final sparsity of each. Run it in the INC venv:

    PYTHONPATH=. /work/venv-inc/bin/python benchmarks/mask_parity.py
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import prunelab  # noqa: E402
from benchmarks.accuracy_common import inc_backend  # noqa: E402
from benchmarks.accuracy_mrpc import EXCLUDED  # noqa: E402

CASES = [("4x1", 0.8, "snip_momentum"), ("2:4", 0.5, "snip_momentum"), ("1x1", 0.9, "magnitude"),
         ("1xchannel", 0.5, "snip_momentum")]
START, END, FREQUENCY, STEPS = 10, 50, 4, 60


def pruned_weights(model: torch.nn.Module) -> torch.Tensor:
    """Flat flags (1 = zero) over the encoder Linear weights, in module order."""
    return torch.cat([(module.weight == 0).flatten() for name, module in model.named_modules()
                      if isinstance(module, torch.nn.Linear) and "encoder" in name])


def run_case(model: torch.nn.Module, pattern: str, target: float, criterion: str) -> dict:
    config = dict(target_sparsity=target, pattern=pattern, pruning_type=criterion, pruning_scope="global",
                  sparsity_decay_type="exp", max_sparsity_ratio_per_op=0.98, excluded_op_names=EXCLUDED,
                  pruning_op_types=["Linear"], start_step=START, end_step=END, pruning_frequency=FREQUENCY)
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    backends = [prunelab.prepare_pruning(ours, copy.deepcopy(config)), inc_backend(theirs, config)]
    params = [dict(ours.named_parameters()), dict(theirs.named_parameters())]
    worst = 0
    for callbacks in backends:
        callbacks.on_train_begin()
    for step in range(STEPS):
        for callbacks in backends:
            callbacks.on_step_begin(step)
        generator = torch.Generator().manual_seed(step)
        for name, param in params[0].items():
            grad = torch.randn(param.shape, generator=generator) * 0.01
            param.grad, params[1][name].grad = grad.clone(), grad.clone()
        for callbacks in backends:
            callbacks.on_before_optimizer_step()
        with torch.no_grad():
            for side in params:
                for param in side.values():
                    param -= 0.01 * param.grad
        for callbacks in backends:
            callbacks.on_after_optimizer_step()
        ours_pruned, theirs_pruned = pruned_weights(ours), pruned_weights(theirs)
        worst = max(worst, int((ours_pruned != theirs_pruned).sum()))
    return {"case": f"{pattern} {criterion} {target}", "weights": ours_pruned.numel(),
            "most_differing_weights": worst, "sparsity_prunelab": round(ours_pruned.float().mean().item(), 4),
            "sparsity_inc": round(theirs_pruned.float().mean().item(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=4, vocab_size=100))
    for pattern, target, criterion in CASES:
        print(json.dumps(run_case(model, pattern, target, criterion)), flush=True)


if __name__ == "__main__":
    main()
