"""Coupled units: attention heads and FFN neurons pruned whole across the modules that hold them.

A group with pattern ``head`` or ``neuron`` prunes *structures* (``coupling.Structure``: the heads
of one layer, or its FFN neurons) instead of single ops. It is a ``PruningGroup`` in every other
respect (schedule, criteria, global/local scope, min/max ratio per op, progressive blend,
checkpoints); only what touches tensors is specialised here:

* **Scores.** A unit's score is the criterion reduced over *all* its weights in all its modules
  (its rows in query/key/value, its columns in the output projection; its FFN row and column),
  however many each module holds (a grouped-query unit: the rows of its query heads but of one key
  and one value head), divided by their number: the mean, as for every other pattern. Biases
  follow their rows in the masks (so the unit is exactly removable) but are neither scored nor
  counted, like every other pattern's biases.
* **Masks.** Each structure keeps one 0/1 flag per unit (``keep``); every member weight and bias
  is multiplied by a broadcast view of it after every optimizer step (and gradients before it), so
  the coupled invariant (all of a unit's weights zero together) holds exactly through training.
* **An op for selection** is one structure: ``min/max_sparsity_ratio_per_op`` bound the fraction
  of a layer's heads (or neurons) pruned, so with the default max 0.98 a layer keeps at least one
  head; ``max_sparsity_ratio_per_op: 1.0`` lets a layer lose all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.sparsity.calibrated import CalibratedGroup
from prunelab.sparsity.config import GroupConfig
from prunelab.sparsity.criteria import CRITERIA
from prunelab.sparsity.coupling import Slice, Structure, find_structures, known_layouts, unit_flags
from prunelab.sparsity.obs import ObsGroup
from prunelab.sparsity.ops import OpView, op_kind
from prunelab.sparsity.patterns import with_pruned_last
from prunelab.sparsity.pruner import PruningGroup


@dataclass
class Member:
    """One module of a structure: its rows (weight rows + bias) or its columns, in one or more
    slices (GPT-2's fused ``c_attn``: three), belong to the units."""

    name: str
    module: nn.Module  # nn.Linear or GPT-2 Conv1D
    axis: str  # "rows" or "cols" of the [out, in] view
    slices: tuple[Slice, ...]
    units: int
    weight_mask: torch.Tensor | None = None  # [out, 1] (rows) or [1, in] (cols) as [out, in], stored like the weight
    bias_mask: torch.Tensor | None = None  # [out] for a rows member with a bias
    view: OpView = field(init=False)  # reads the weight as [out, in] (GPT-2's Conv1D stores [in, out])

    def __post_init__(self) -> None:
        self.view = OpView(op_kind(self.module), self.module.weight.shape)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias if self.axis == "rows" else None

    @property
    def numel(self) -> int:
        """Weights of the units in this module."""
        other = self.view.cols if self.axis == "rows" else self.view.rows
        return sum(self.units * piece.size * other for piece in self.slices)

    def reduce(self, elementwise: torch.Tensor) -> torch.Tensor:
        """Per-unit sums ``[units]`` of a weight-shaped element-wise score."""
        matrix = self.view.to_2d(elementwise)
        total = None
        for piece in self.slices:
            span = slice(piece.start, piece.start + self.units * piece.size)
            if self.axis == "rows":
                part = matrix[span].reshape(self.units, -1).sum(dim=1)
            else:
                part = matrix[:, span].reshape(matrix.shape[0], self.units, piece.size).sum(dim=(0, 2))
            total = part if total is None else total + part
        return total

    def write(self, keep: torch.Tensor) -> None:
        """Rebuild the broadcast masks from per-unit ``keep`` flags."""
        weight = self.module.weight
        length = self.view.rows if self.axis == "rows" else self.view.cols
        per_index = unit_flags(self.slices, keep.to(weight.device, weight.dtype), length)
        matrix = per_index.unsqueeze(1) if self.axis == "rows" else per_index.unsqueeze(0)
        self.weight_mask = self.view.from_2d(matrix).contiguous()
        self.bias_mask = per_index if self.bias is not None else None

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(parameter, broadcast mask)`` for the weight and, for rows, the bias."""
        found = [(self.module.weight, self.weight_mask)]
        if self.bias_mask is not None:
            found.append((self.module.bias, self.bias_mask))
        return found


@dataclass
class CoupledOp:
    """One structure's pruning state; an "op" for selection, scope and min/max ratios."""

    structure: Structure
    members: list[Member]
    unit_weight: int  # weights per unit over all members (biases not counted)
    offset: int
    keep: torch.Tensor  # [units] float32: 1 kept, 0 pruned
    state: torch.Tensor | None = None  # criterion state, [units] float32 (sums, not means)
    final_keep: torch.Tensor | None = None  # progressive: the keep flags being blended in
    stage: torch.Tensor | None = None  # progressive: sub-step at which each unit goes (int8)
    pruned_units: int = 0
    _pairs: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.structure.name

    @property
    def units(self) -> int:
        return self.structure.units

    @property
    def numel(self) -> int:
        return self.units * self.unit_weight

    @property
    def span(self) -> slice:
        return slice(self.offset, self.offset + self.units)

    @property
    def weight(self) -> torch.Tensor:  # the device and dtype the state follows
        return self.members[0].weight

    def write_members(self) -> None:
        for member in self.members:
            member.write(self.keep)
        self._pairs = [pair for member in self.members for pair in member.pairs()]

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._pairs

    def kept(self) -> list[int]:
        return torch.nonzero(self.keep > 0).squeeze(1).tolist()


class CoupledGroup(PruningGroup):
    """A ``PruningGroup`` whose ops are structures (``head`` or ``neuron`` units), see the module doc."""

    def __init__(self, index: int, config: GroupConfig, matched: list[tuple[str, nn.Module, str]], model: nn.Module):
        kind = config.pattern_object.name
        self.kind = kind
        structures, problems = find_structures(model, kind, config.num_attention_heads)
        matched_names = {name for name, _, _ in matched}
        self._complete = [s for s in structures if all(name in matched_names for name in s.members)]
        partial = [s for s in structures if s not in self._complete and any(n in matched_names for n in s.members)]
        self._partial_members = [n for s in partial for n in s.members if n in matched_names]
        self._problems = problems
        self._modules = dict(model.named_modules())
        super().__init__(index, config, matched)
        del self._modules  # only needed while building the ops
        # Only the modules of its structures belong to the group: a "head" group leaves the FFN
        # modules it matched free for another group (a "neuron" one, say).
        own = {name for s in self._complete for name in s.members} | set(self._partial_members)
        self.claimed = [name for name, _, _ in matched if name in own]

    def _build_ops(self, matched):
        offset = 0
        for structure in self._complete:
            members = [
                Member(name, self._modules[name], axis, structure.slices_of(name), structure.units)
                for axis, names in (("rows", structure.rows), ("cols", structure.cols))
                for name in names
            ]
            unit_weight = sum(member.numel for member in members) // structure.units
            device = members[0].weight.device
            op = CoupledOp(structure, members, unit_weight, offset, torch.ones(structure.units, device=device))
            op.write_members()
            self.ops.append(op)
            offset += structure.units
        # Modules matched but part of an incomplete structure cannot be pruned exactly: left dense.
        self.unfit.extend(self._partial_members)

    def fits_none_message(self, matched) -> str:
        """Why a coupled group with a target would prune nothing."""
        kind = "attention head" if self.kind == "head" else "FFN neuron"
        detail = f" ({'; '.join(self._problems[:3])})" if self._problems else ""
        return (
            f"pruning group {self.index}: pattern {self.kind} finds no complete {kind} among its {len(matched)} ops"
            f"{detail}; every module of a unit must be among the group's ops. Known layouts: {known_layouts(self.kind)}"
        )

    # ------------------------------------------------------------------------------ reading out
    def _any_pruned(self) -> bool:
        return any(bool((op.keep == 0).any()) for op in self.ops)

    @property
    def op_names(self) -> list[str]:
        return [member.name for op in self.ops for member in op.members]

    def report_ops(self):
        for op in self.ops:
            for member in op.members:
                yield member.name, member.weight, list(member.weight.shape)

    def kept_units(self) -> dict[str, dict[str, list[int]]]:
        """``{layer: {"heads" | "neurons": [kept unit indices]}}`` from the current masks."""
        return {op.structure.layer: {f"{self.kind}s": op.kept()} for op in self.ops}

    def unit_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            op.structure.layer: {f"{self.kind}s": {"kept": int(op.keep.sum()), "total": op.units}} for op in self.ops
        }

    # ------------------------------------------------------------------------------ hooks
    def sync_devices(self) -> None:
        for op in self.ops:
            weight = op.weight
            stale = any(
                member.weight_mask.device != member.weight.device or member.weight_mask.dtype != member.weight.dtype
                for member in op.members
            )
            if op.keep.device != weight.device:
                op.keep = op.keep.to(weight.device)
                op.state = None if op.state is None else op.state.to(weight.device)
                op.final_keep = None if op.final_keep is None else op.final_keep.to(weight.device)
                op.stage = None if op.stage is None else op.stage.to(weight.device)
                stale = True
            if stale:
                op.write_members()

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [pair for op in self.ops for pair in op.pairs()]

    @torch.no_grad()
    def apply_masks(self) -> None:
        if self.masked:
            pairs = self._pairs()
            torch._foreach_mul_([p for p, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def before_optimizer_step(self, step: int) -> None:
        seen = [(p.grad, m) for p, m in self._pairs() if p.grad is not None]
        if self.masked and seen:
            torch._foreach_mul_([g for g, _ in seen], [m for _, m in seen])
        if not self._observes_gradients(step, bool(seen), f"{self.kind} structures"):
            return
        for op in self.ops:
            fresh = None
            for member in op.members:  # one member at a time: its temporaries stay in cache
                grad = member.weight.grad
                if grad is None:
                    continue
                part = member.reduce(self.criterion.elementwise(member.weight, grad))
                fresh = part if fresh is None else fresh.add_(part)
            if fresh is not None:
                op.state = self.criterion.accumulate(op.state, fresh)

    # ----------------------------------------------------------------------------- mask updates
    def _score(self, op: CoupledOp, out: torch.Tensor) -> None:
        if self.criterion.needs_grad:
            total = op.state if op.state is not None else torch.zeros(op.units, device=op.keep.device)
        else:
            total = sum(member.reduce(self.criterion.magnitude(member.weight)) for member in op.members)
        with_pruned_last(total.float() / op.unit_weight, op.keep, out=out)
        return None

    def _set_mask(self, op: CoupledOp, helper: object) -> None:
        pruned = self._picked[op.span]
        keep = 1.0 - pruned
        if not self.config.progressive:
            op.keep = keep
            op.write_members()
            return
        op.final_keep = keep
        op.stage = self._blend_stages(op, pruned).to(torch.int8)

    def _blend(self, sub_step: int) -> None:
        for op in self.ops:
            if op.final_keep is None:
                continue
            keep = op.final_keep.clone()
            if sub_step < self.blend_steps - 1:
                keep.add_((op.stage > sub_step + 1).float())
            op.keep = keep
            op.write_members()
        if sub_step >= self.blend_steps - 1:
            for op in self.ops:
                op.final_keep = op.stage = None
            self.blend_start = None
        self.apply_masks()

    # ------------------------------------------------------------------------------ checkpoint
    def _op_state(self, op: CoupledOp) -> dict:
        return {
            "kind": self.kind,
            "members": [member.name for member in op.members],
            "units": op.units,
            "mask": op.keep.bool().cpu(),  # per unit
            "state": None if op.state is None else op.state.detach().clone().cpu(),
            "final_mask": None if op.final_keep is None else op.final_keep.bool().cpu(),
            "stage": None if op.stage is None else op.stage.clone().cpu(),
            "pruned_units": op.pruned_units,
        }

    def _load_op(self, op: CoupledOp, entry: dict) -> None:
        members = [member.name for member in op.members]
        if entry.get("members") != members or entry.get("units") != op.units:
            raise ValueError(
                f"{op.name}: checkpoint has {entry.get('units')} units over {entry.get('members')}, "
                f"this model {op.units} over {members}"
            )
        device = op.weight.device
        op.keep = entry["mask"].to(device, torch.float32)
        op.state = None if entry["state"] is None else entry["state"].to(device)
        op.final_keep = None if entry["final_mask"] is None else entry["final_mask"].to(device, torch.float32)
        op.stage = None if entry["stage"] is None else entry["stage"].to(device)
        op.pruned_units = int(entry["pruned_units"])
        op.write_members()


def make_group(index: int, config: GroupConfig, matched: list[tuple[str, nn.Module, str]], model: nn.Module) -> PruningGroup:
    """A ``CoupledGroup`` for ``head``/``neuron`` patterns (unless pattern_lock), an ``ObsGroup`` for
    a second-order criterion, a ``CalibratedGroup`` for one that prunes from its ops' inputs, else
    a ``PruningGroup``."""
    if config.pattern_object.coupled and config.pruning_type != "pattern_lock":
        return CoupledGroup(index, config, matched, model)
    if config.pruning_type != "pattern_lock" and CRITERIA[config.criterion].second_order:
        return ObsGroup(index, config, matched)
    if config.pruning_type != "pattern_lock" and CRITERIA[config.criterion].calibrated:
        return CalibratedGroup(index, config, matched, model)
    return PruningGroup(index, config, matched)
