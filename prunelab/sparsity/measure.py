"""Sparsity as measured in the weights (zeros counted, never the configured target)."""
from __future__ import annotations

import torch
from torch import nn

from prunelab.sparsity.ops import is_linear_or_conv


def count_zeros(tensor: torch.Tensor) -> int:
    return int((tensor == 0).sum())


def _ratio(zeros: int, total: int) -> float:
    return zeros / total if total else 0.0


@torch.no_grad()
def build_report(model: nn.Module, groups: list, step: int) -> dict:
    """The ``Pruning.report()`` dict (schema in the README / ``api`` docs).

    ``pruned_ops_sparsity`` covers the weights of the pruned ops only; ``linear_conv_sparsity``
    divides the same kind of count by the weights of every Linear/Conv module in the model,
    excluded ones included (INC's "Element-wise/matmul, Gemm, conv ratio");
    ``all_params_sparsity`` covers every parameter (tied ones counted once).
    """
    ops = {}
    for group in groups:
        for name, weight, shape in group.report_ops():
            zeros = count_zeros(weight)
            numel = shape[0] * shape[1]
            ops[name] = {
                "shape": shape,
                "numel": numel,
                "zeros": zeros,
                "sparsity": _ratio(zeros, numel),
                "pattern": group.pattern.name,
                "group": group.index,
            }
    linear_conv = [m.weight for m in model.modules() if is_linear_or_conv(m) and isinstance(m.weight, torch.Tensor)]
    unique_linear_conv = list({id(w): w for w in linear_conv}.values())
    params = list(model.parameters())
    report = {
        "ops": ops,
        "unpruned_ops": [name for group in groups for name in group.unfit],
        "pruned_ops_sparsity": _ratio(sum(o["zeros"] for o in ops.values()), sum(o["numel"] for o in ops.values())),
        "linear_conv_sparsity": _ratio(
            sum(count_zeros(w) for w in unique_linear_conv), sum(w.numel() for w in unique_linear_conv)
        ),
        "all_params_sparsity": _ratio(sum(count_zeros(p) for p in params), sum(p.numel() for p in params)),
        "target_sparsity": groups[0].target_sparsity if groups else 0.0,
        "groups": [
            {
                "pattern": group.pattern.name,
                "pruning_type": group.config.pruning_type,
                "target_sparsity": group.target_sparsity,
                "current_sparsity": group.current_sparsity(step),
                "ops": group.op_names,
            }
            for group in groups
        ],
        "step": step,
    }
    units = {}
    for group in groups:
        for layer, kinds in getattr(group, "unit_counts", dict)().items():
            units.setdefault(layer, {}).update(kinds)
    if units:  # only with head / neuron groups: kept and total units per layer
        report["units"] = units
    return report
