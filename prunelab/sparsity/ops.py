"""Which modules are prunable ops, and how each one's weight reads as an ``[out, in]`` matrix."""
from __future__ import annotations

import re

import torch
from torch import nn

# Kinds a group can select through ``pruning_op_types``; "Conv" (INC's spelling) means all convs.
OP_KINDS = ("Linear", "Conv1d", "Conv2d", "Conv1D")
OP_TYPE_ALIASES = {"Conv": ("Conv1d", "Conv2d", "Conv1D")}


def op_kind(module: nn.Module) -> str | None:
    """The prunable kind of ``module``, or None.

    transformers' GPT-2 ``Conv1D`` is recognised by class name so this package never imports
    transformers.
    """
    if isinstance(module, nn.Linear):
        return "Linear"
    if isinstance(module, nn.Conv2d):
        return "Conv2d"
    if isinstance(module, nn.Conv1d):
        return "Conv1d"
    weight = getattr(module, "weight", None)
    if any(cls.__name__ == "Conv1D" for cls in type(module).__mro__) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return "Conv1D"
    return None


def is_linear_or_conv(module: nn.Module) -> bool:
    """Modules counted in the "Linear/Conv" sparsity ratio (INC's "matmul, Gemm, conv ratio")."""
    return op_kind(module) is not None or isinstance(module, nn.Conv3d)


class OpView:
    """Reads a module's weight (or a tensor shaped like it) as ``[out, in]`` and back.

    Linear ``[out, in]``: as is. GPT-2 Conv1D stores ``[in, out]``: transposed. ConvNd
    ``[out, in, *kernel]``: input channels moved last, ``[out, kernel... x in]``, so that N:M groups
    and Mx1 blocks run along input channels, as sparse kernels expect (INC did the same).
    """

    def __init__(self, kind: str, weight_shape: torch.Size):
        self.kind = kind
        self.weight_shape = tuple(weight_shape)
        if kind == "Conv1D":
            self.rows, self.cols = self.weight_shape[1], self.weight_shape[0]
        else:
            self.rows = self.weight_shape[0]
            self.cols = int(torch.Size(self.weight_shape[1:]).numel())

    def to_2d(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.kind == "Linear":
            return tensor
        if self.kind == "Conv1D":
            return tensor.t()
        return tensor.movedim(1, -1).reshape(self.rows, self.cols)

    def writable_2d(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The ``[out, in]`` view of ``tensor`` when writing to it writes ``tensor`` (not for convs)."""
        return None if self.kind in ("Conv1d", "Conv2d") else self.to_2d(tensor)

    def from_2d(self, matrix: torch.Tensor) -> torch.Tensor:
        if self.kind == "Linear":
            return matrix
        if self.kind == "Conv1D":
            return matrix.t()
        channels_last = (self.weight_shape[0], *self.weight_shape[2:], self.weight_shape[1])
        return matrix.reshape(channels_last).movedim(-1, 1)


def select_ops(
    model: nn.Module,
    op_names: tuple[str, ...],
    excluded_op_names: tuple[str, ...],
    op_types: tuple[str, ...],
) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, kind)`` for each module of an allowed kind whose name matches.

    INC semantics: a name matches when any ``op_names`` regex is found in it (``re.search``; an
    empty list matches all) and no ``excluded_op_names`` regex is.
    """
    kinds = {kind for op_type in op_types for kind in OP_TYPE_ALIASES.get(op_type, (op_type,))}
    include = [re.compile(p) for p in op_names] or [re.compile("")]
    exclude = [re.compile(p) for p in excluded_op_names]
    chosen = []
    for name, module in model.named_modules():
        kind = op_kind(module)
        if kind not in kinds:
            continue
        if any(p.search(name) for p in include) and not any(p.search(name) for p in exclude):
            chosen.append((name, module, kind))
    return chosen
