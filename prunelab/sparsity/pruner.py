"""One group of ops pruned together: scores, scope, mask updates, mask application.

Masks live here as tensors shaped and typed like each weight (1 kept, 0 pruned); the model is
never patched. A mask update scores every unit of every op once, writes the scores into one flat
buffer, and selects on it: global scope solves a single threshold for the whole group (re-solving
only for ops pinned at their min/max ratio), local scope selects per op. Cost is linear in the
number of weights and of ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.sparsity.config import PROGRESSIVE_STEPS, GroupConfig
from prunelab.sparsity.criteria import CRITERIA
from prunelab.sparsity.ops import OpView
from prunelab.sparsity.patterns import PRUNED_SCORE
from prunelab.sparsity.schedules import Schedule
from prunelab.sparsity.selection import lowest_by_weight, lowest_k


@dataclass
class PrunedOp:
    """One op's pruning state; ``mask`` is what is applied to the weight."""

    name: str
    module: nn.Module
    view: OpView
    unit_weight: int  # weights zeroed per pruned unit
    units: int  # number of prunable units
    offset: int  # first position of this op's units in the group's score buffer
    mask: torch.Tensor
    state: torch.Tensor | None = None  # criterion state (reduced shape, float32)
    final_mask: torch.Tensor | None = None  # progressive: the mask being blended in
    stage: torch.Tensor | None = None  # progressive: sub-step at which each weight goes (int8)
    pruned_units: int = 0

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def numel(self) -> int:
        return self.view.rows * self.view.cols

    @property
    def span(self) -> slice:
        return slice(self.offset, self.offset + self.units)


class PruningGroup:
    """The ops of one ``pruning_configs`` entry and everything needed to prune them."""

    def __init__(self, index: int, config: GroupConfig, matched: list[tuple[str, nn.Module, str]]):
        self.index = index
        self.config = config
        self.pattern = config.pattern_object
        self.locked = config.pruning_type == "pattern_lock"
        self.criterion = None if self.locked else CRITERIA[config.criterion]
        self.schedule = Schedule(
            config.start_step, config.end_step, config.pruning_frequency, config.sparsity_decay_type, config.target_sparsity,
            config.initial_sparsity,
        )
        self.blend_steps = min(PROGRESSIVE_STEPS, config.pruning_frequency) if config.progressive else 1
        self.blend_interval = config.pruning_frequency // self.blend_steps
        self.blend_start: int | None = None  # step of the update whose mask is being blended in
        self.ops: list = []  # PrunedOp here; coupled.CoupledOp in a coupled group
        self.unfit: list[str] = []  # ops matched but left dense: their shape does not fit the pattern
        self.claimed: list[str] = [name for name, _, _ in matched]  # op names no other group may take
        self._build_ops(matched)
        self.numel = sum(op.numel for op in self.ops)
        self.units = sum(op.units for op in self.ops)
        # Per-unit scores and selection flags of the whole group, allocated at the first update.
        self._scores: torch.Tensor | None = None
        self._picked: torch.Tensor | None = None
        self._helpers: list[object] = [None] * len(self.ops)
        self.masked = self.locked and self._any_pruned()
        self.lock_sparsity = (
            sum(int((op.mask == 0).sum()) for op in self.ops) / self.numel if self.locked and self.numel else 0.0
        )

    def _build_ops(self, matched: list[tuple[str, nn.Module, str]]) -> None:
        """One ``PrunedOp`` per matched op whose shape fits the pattern (every op when locked)."""
        offset = 0
        for name, module, kind in matched:
            view = OpView(kind, module.weight.shape)
            if not self.locked and not self.pattern.fits(view.rows, view.cols):
                self.unfit.append(name)
                continue
            if self.locked:  # nothing is selected: one unit per weight, whatever the pattern
                units, unit_weight = view.rows * view.cols, 1
            else:
                units, unit_weight = self.pattern.unit_count(view.rows, view.cols), self.pattern.unit_weight(view.rows, view.cols)
            with torch.no_grad():
                mask = (module.weight != 0).to(module.weight.dtype) if self.locked else torch.ones_like(module.weight)
            self.ops.append(PrunedOp(name, module, view, unit_weight, units, offset, mask))
            offset += units

    def _any_pruned(self) -> bool:
        return any(bool((op.mask == 0).any()) for op in self.ops)

    # --------------------------------------------------------------------------- reading out
    @property
    def op_names(self) -> list[str]:
        """The modules whose weights this group prunes (report order)."""
        return [op.name for op in self.ops]

    def report_ops(self):
        """``(name, weight, [out, in])`` for every module whose weight this group prunes."""
        for op in self.ops:
            yield op.name, op.weight, [op.view.rows, op.view.cols]

    # ----------------------------------------------------------------- hooks (called by api.Pruning)
    def current_sparsity(self, step: int) -> float:
        """The scheduled sparsity in force at ``step``."""
        return self.lock_sparsity if self.locked else self.schedule.sparsity_at(step)

    @property
    def target_sparsity(self) -> float:
        return self.lock_sparsity if self.locked else self.config.target_sparsity

    def sync_devices(self) -> None:
        """Follow weights moved (``model.to``) or recast after ``prepare_pruning``."""
        for op in self.ops:
            weight = op.weight
            if op.mask.device != weight.device or op.mask.dtype != weight.dtype:
                op.mask = op.mask.to(weight.device, weight.dtype)
                op.state = None if op.state is None else op.state.to(weight.device)
                op.final_mask = None if op.final_mask is None else op.final_mask.to(weight.device, weight.dtype)
                op.stage = None if op.stage is None else op.stage.to(weight.device)

    @torch.no_grad()
    def apply_masks(self) -> None:
        if self.masked:
            torch._foreach_mul_([op.weight for op in self.ops], [op.mask for op in self.ops])

    @torch.no_grad()
    def step_begin(self, step: int) -> None:
        if self.locked:
            return
        index = self.schedule.update_index(step)
        if index is not None:
            sparsity = self.schedule.sparsity_at_update(index)
            if sparsity > 0:
                self.update_masks(sparsity, step)
            return
        if self.blend_start is not None:
            offset = step - self.blend_start
            if offset % self.blend_interval == 0:
                self._blend(offset // self.blend_interval)

    @torch.no_grad()
    def before_optimizer_step(self, step: int) -> None:
        """Zero pruned gradients (optimizer state never sees them), then feed the criterion."""
        seen = [op for op in self.ops if op.weight.grad is not None]
        if self.masked and seen:
            torch._foreach_mul_([op.weight.grad for op in seen], [op.mask for op in seen])
        if not self._observes_gradients(step, bool(seen), "ops"):
            return
        for op in seen:
            self._observe(op)

    def _observe(self, op: PrunedOp) -> None:
        """Feed ``op``'s gradient to its criterion state."""
        op.state = self.criterion.observe(op.state, op.view.to_2d(op.weight), op.view.to_2d(op.weight.grad), self.pattern)

    def _observes(self, step: int) -> bool:
        """Whether gradients of ``step`` feed the criterion."""
        return self.criterion is not None and self.criterion.needs_grad and self.criterion.observes(step, self.schedule)

    def _observes_gradients(self, step: int, any_grad: bool, units: str) -> bool:
        """Whether the criterion takes gradients at ``step``; an error if it does and none exist."""
        if not self._observes(step):
            return False
        if not any_grad and self.ops:
            raise RuntimeError(
                f"pruning group {self.index} ({self.config.pruning_type}) needs gradients at step {step}, but none "
                f"of its {len(self.ops)} {units} has .grad: call on_before_optimizer_step() after loss.backward() "
                "and before optimizer.zero_grad()"
            )
        return any_grad

    @torch.no_grad()
    def finish(self) -> None:
        """End of training: a progressive blend still under way jumps to its final mask."""
        if self.blend_start is not None:
            self._blend(self.blend_steps - 1)

    # ----------------------------------------------------------------------------- mask updates
    @torch.no_grad()
    def update_masks(self, sparsity: float, step: int) -> None:
        """Prune the group to ``sparsity`` (fraction of its weights) and zero the pruned weights."""
        if not self.ops:
            return
        if self.blend_start is not None:
            self._blend(self.blend_steps - 1)
        device = self.ops[0].weight.device
        if self._scores is None or self._scores.device != device:
            self._scores = torch.empty(self.units, dtype=torch.float32, device=device)
            self._picked = torch.empty_like(self._scores)
        for position, op in enumerate(self.ops):
            self._helpers[position] = self._score(op, self._scores[op.span])
        total = float(self._scores.sum())
        if not math.isfinite(total):
            raise FloatingPointError(
                f"pruning group {self.index}: scores are NaN or infinite at step {step} (NaN/inf gradients? with "
                "mixed precision, unscale gradients before on_before_optimizer_step())"
            )
        if self.config.pruning_scope == "global":
            self._select_global(sparsity)
        else:
            self._select_local(sparsity)
        for position, op in enumerate(self.ops):
            self._set_mask(op, self._helpers[position])
        self._helpers = [None] * len(self.ops)
        self.masked = True
        if self.config.progressive:
            self.blend_start = step
            self._blend(0)
        else:
            self.apply_masks()

    def _score(self, op: PrunedOp, out: torch.Tensor) -> object:
        """Write ``op``'s per-unit scores into ``out``; return what ``_set_mask`` needs."""
        score = self.criterion.score(op.state, op.view.to_2d(op.weight), self.pattern)
        return self.pattern.unit_scores(score, op.view.to_2d(op.mask), out)

    def _bounds(self, op: PrunedOp, sparsity: float) -> tuple[int, int]:
        """Fewest and most units ``op`` may lose at ``sparsity`` (min/max ratio per op)."""
        most = min(op.units, math.floor(self.config.max_sparsity_ratio_per_op * op.numel / op.unit_weight + 1e-9))
        fewest = math.ceil(min(self.config.min_sparsity_ratio_per_op, sparsity) * op.numel / op.unit_weight - 1e-9)
        return max(min(fewest, most), op.pruned_units), max(most, op.pruned_units)

    def _select_local(self, sparsity: float) -> None:
        for op in self.ops:
            fewest, most = self._bounds(op, sparsity)
            count = min(max(round(sparsity * op.numel / op.unit_weight), fewest), most)
            lowest_k(self._scores[op.span], count, out=self._picked[op.span])
            op.pruned_units = count

    def _select_global(self, sparsity: float) -> None:
        """One threshold over all free ops; ops pushed past their min/max are pinned, rest re-solved."""
        remaining = sparsity * self.numel
        free = list(self.ops)
        while free:
            unit_weights = {op.unit_weight for op in free}
            scores = self._scores if len(free) == len(self.ops) else torch.cat([self._scores[op.span] for op in free])
            if len(unit_weights) == 1:
                weight = unit_weights.pop()
                floor = sum(op.pruned_units for op in free)
                count = min(max(round(remaining / weight), floor), scores.numel())
                picked = lowest_k(scores, count, out=self._picked if scores is self._scores else None)
            else:
                per_unit = torch.cat([torch.full((op.units,), float(op.unit_weight), device=scores.device) for op in free])
                picked = lowest_by_weight(scores, per_unit, remaining)
            start = 0
            counts = []
            for op in free:
                counts.append(int(picked[start : start + op.units].sum()))
                start += op.units
            pinned = []
            for op, count in zip(free, counts):
                fewest, most = self._bounds(op, sparsity)
                if not fewest <= count <= most:
                    pinned.append((op, min(max(count, fewest), most)))
            if not pinned:
                start = 0
                for op, count in zip(free, counts):
                    if picked is not self._picked:
                        self._picked[op.span] = picked[start : start + op.units]
                    op.pruned_units = count
                    start += op.units
                return
            for op, count in pinned:
                if count == op.pruned_units:  # pinned where it already is: keep its pruned units
                    torch.lt(self._scores[op.span], PRUNED_SCORE / 2, out=self._picked[op.span])
                else:
                    lowest_k(self._scores[op.span], count, out=self._picked[op.span])
                op.pruned_units = count
                remaining -= count * op.unit_weight
            pinned_names = {op.name for op, _ in pinned}
            free = [op for op in free if op.name not in pinned_names]

    def _set_mask(self, op: PrunedOp, helper: object) -> None:
        pruned = self._picked[op.span]
        if not self.config.progressive:
            target = op.view.writable_2d(op.mask)
            if target is not None:
                self.pattern.write_keep(target, pruned, helper)
                return
        rows, cols = op.view.rows, op.view.cols
        keep = torch.empty(rows, cols, dtype=op.mask.dtype, device=op.mask.device)
        self.pattern.write_keep(keep, pruned, helper)
        if not self.config.progressive:
            op.mask.copy_(op.view.from_2d(keep))
            return
        per_weight = self.pattern.expand(self._blend_stages(op, pruned), rows, cols) * (1.0 - keep)
        op.final_mask = op.view.from_2d(keep).contiguous()
        op.stage = op.view.from_2d(per_weight).to(torch.int8).contiguous()

    def _blend_stages(self, op, pruned: torch.Tensor) -> torch.Tensor:
        """Per unit of ``op``: the sub-step (1..blend_steps) at which a unit newly pruned by this
        update goes, lowest score first, so the new mask arrives in even slices; 0 elsewhere."""
        scores = self._scores[op.span]
        fresh_index = torch.nonzero((pruned > 0) & (scores > PRUNED_SCORE / 2)).squeeze(1)
        order = fresh_index[torch.argsort(scores[fresh_index], stable=True)]
        stage = torch.zeros(op.units, dtype=torch.float32, device=scores.device)
        slices = torch.arange(order.numel(), device=scores.device) * self.blend_steps // max(order.numel(), 1)
        stage[order] = slices.float() + 1
        return stage

    def _blend(self, sub_step: int) -> None:
        """Apply the progressive mask of ``sub_step`` (0 at the update, last = the full new mask)."""
        for op in self.ops:
            if op.final_mask is None:
                continue
            op.mask.copy_(op.final_mask)
            if sub_step < self.blend_steps - 1:
                op.mask.add_(op.stage > sub_step + 1)
        if sub_step >= self.blend_steps - 1:
            for op in self.ops:
                op.final_mask = op.stage = None
            self.blend_start = None
        self.apply_masks()

    # ------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "blend_start": self.blend_start,
            "ops": {op.name: self._op_state(op) for op in self.ops},
        }

    def _op_state(self, op: PrunedOp) -> dict:
        return {
            "shape": list(op.weight.shape),
            "mask": op.mask.bool().cpu(),
            "state": None if op.state is None else op.state.detach().clone().cpu(),
            "final_mask": None if op.final_mask is None else op.final_mask.bool().cpu(),
            "stage": None if op.stage is None else op.stage.clone().cpu(),
            "pruned_units": op.pruned_units,
        }

    @torch.no_grad()
    def load_state_dict(self, saved: dict) -> None:
        own = self.config.to_dict()
        for key in ("pattern", "pruning_type", "pruning_scope"):
            if saved["config"][key] != own[key]:
                raise ValueError(
                    f"pruning group {self.index}: checkpoint has {key}={saved['config'][key]!r}, this run {own[key]!r}"
                )
        names = [op.name for op in self.ops]
        if list(saved["ops"]) != names:
            raise ValueError(f"pruning group {self.index}: checkpoint prunes ops {list(saved['ops'])}, this run {names}")
        for op in self.ops:
            self._load_op(op, saved["ops"][op.name])
        self.blend_start = saved["blend_start"]
        self.masked = self._any_pruned()
        self.apply_masks()

    def _load_op(self, op: PrunedOp, entry: dict) -> None:
        if entry.get("shape") != list(op.weight.shape):
            raise ValueError(f"op {op.name}: checkpoint weight shape {entry.get('shape')}, model {list(op.weight.shape)}")
        device, dtype = op.weight.device, op.weight.dtype
        op.mask = entry["mask"].to(device, dtype)
        op.state = None if entry["state"] is None else entry["state"].to(device)
        op.final_mask = None if entry["final_mask"] is None else entry["final_mask"].to(device, dtype)
        op.stage = None if entry["stage"] is None else entry["stage"].to(device)
        op.pruned_units = int(entry["pruned_units"])
