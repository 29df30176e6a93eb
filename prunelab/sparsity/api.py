"""``prepare_pruning`` and the ``Pruning`` object a training loop drives with hook calls.

Call order, once per optimizer step (with gradient accumulation: once per *optimizer* step, not
per micro-batch)::

    pruning.on_train_begin()
    for batch in loader:
        pruning.on_step_begin(step)        # may update masks (before the forward pass)
        loss.backward()
        pruning.on_before_optimizer_step() # zeroes pruned gradients, feeds the criterion
        optimizer.step()
        pruning.on_after_optimizer_step()  # re-zeroes pruned weights, advances the step count
    pruning.on_train_end()

The engine counts optimizer steps itself (as INC did); the ``step`` passed to ``on_step_begin``
is accepted for INC-compatible call sites and otherwise unused. A broken sequence (a hook skipped
or repeated) raises ``RuntimeError`` naming the missing call instead of silently pruning nothing.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from prunelab.sparsity.config import PruningConfig, parse_config
from prunelab.sparsity.coupled import CoupledGroup, make_group
from prunelab.sparsity.measure import build_report
from prunelab.sparsity.ops import OpView, select_ops
from prunelab.sparsity.patterns import NInMPattern
from prunelab.sparsity.pruner import PruningGroup

STATE_FORMAT = "prunelab.sparsity/1"
_SHAPES_LISTED = 3  # distinct op shapes named when a pattern fits none of a group's ops

# Hook phases within one optimizer step.
_READY, _STEPPING, _GRADS = "ready", "stepping", "grads"


def prepare_pruning(model: nn.Module, config: Mapping | PruningConfig) -> "Pruning":
    """Validate ``config`` and attach a pruning engine to ``model`` (the model is not modified yet).

    Call it after moving the model to its device. ``config`` is an INC-style dict (or OmegaConf
    DictConfig) or a ``PruningConfig``; see ``prunelab.sparsity.config`` for the keys. Raises
    ``ValueError`` when a group matches no op, two groups claim one op, or a group with a
    ``target_sparsity`` above 0 has no op whose shape fits its pattern (ops that do not fit in a
    group where others do stay dense, with one warning).
    """
    return Pruning(model, parse_config(config))


class Pruning:
    """Masks, scores and schedule for every group of ops; driven by the hook methods."""

    def __init__(self, model: nn.Module, config: PruningConfig):
        self.model = model
        self.config = config
        self.groups: list[PruningGroup] = []
        owner: dict[str, int] = {}
        weights: dict[int, str] = {}
        # A decoder's lm_head tied to its input embeddings: pruning it would zero embedding rows.
        embeddings = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
        for index, group_config in enumerate(config.groups):
            matched = select_ops(
                model, group_config.op_names, group_config.excluded_op_names, group_config.pruning_op_types
            )
            if not matched:
                raise ValueError(
                    f"pruning group {index} matches no op: op_names={list(group_config.op_names)}, "
                    f"excluded_op_names={list(group_config.excluded_op_names)}, "
                    f"pruning_op_types={list(group_config.pruning_op_types)}"
                )
            group = make_group(index, group_config, matched, model)
            claimed = set(group.claimed)
            for name, module, _ in matched:
                if name not in claimed:
                    continue
                if name in owner:
                    raise ValueError(
                        f"op {name!r} is claimed by pruning groups {owner[name]} and {index}; "
                        "narrow their op_names or excluded_op_names so each op belongs to one group"
                    )
                owner[name] = index
                if id(module.weight) in weights:
                    raise ValueError(
                        f"ops {weights[id(module.weight)]!r} and {name!r} share one weight tensor; exclude one of them"
                    )
                weights[id(module.weight)] = name
                if id(module.weight) in embeddings:
                    raise ValueError(
                        f"op '{name}' shares its weight with the embedding '{embeddings[id(module.weight)]}' (tied): "
                        "pruning it would zero rows of the embedding too; add it to excluded_op_names"
                    )
            if not group.ops and group_config.target_sparsity > 0 and isinstance(group, CoupledGroup):
                raise ValueError(group.fits_none_message(matched))
            if group.unfit and not group.ops and group_config.target_sparsity > 0:
                raise ValueError(_fits_none_message(group, matched))
            self.groups.append(group)
        unfit = [(name, group) for group in self.groups for name in group.unfit]
        if unfit:
            listing = ", ".join(
                f"{name} {list(_module_shape(model, name))} ({group.pattern.name})" for name, group in unfit
            )
            warnings.warn(
                f"prunelab: {len(unfit)} op(s) do not fit their pruning pattern and stay dense: {listing}",
                stacklevel=3,
            )
        self.step = 0
        self._began = False
        self._phase = _READY

    # --------------------------------------------------------------------------------- hooks
    def on_train_begin(self) -> None:
        """Start (or resume) training: masks follow the weights' device and are applied."""
        for group in self.groups:
            group.sync_devices()
            group.apply_masks()
        self._began = True
        self._phase = _READY

    def on_step_begin(self, step: int | None = None) -> None:
        """Before the forward pass of optimizer step ``self.step``; updates masks when scheduled."""
        if not self._began:
            raise RuntimeError("on_step_begin() called before on_train_begin(): call on_train_begin() once before the loop")
        if self._phase == _STEPPING:
            raise RuntimeError(
                f"on_step_begin() called twice for step {self.step} without on_before_optimizer_step() and "
                "on_after_optimizer_step(): call both around every optimizer.step()"
            )
        if self._phase == _GRADS:
            raise RuntimeError(
                f"on_after_optimizer_step() was not called after optimizer.step() of step {self.step}: without it "
                "the step count stalls and pruning silently stops (INC's failure); call it after every optimizer.step()"
            )
        for group in self.groups:
            group.step_begin(self.step)
        self._phase = _STEPPING

    def on_before_optimizer_step(self) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``."""
        if self._phase != _STEPPING:
            missing = "on_after_optimizer_step()" if self._phase == _GRADS else "on_step_begin()"
            raise RuntimeError(
                f"on_before_optimizer_step() called at step {self.step} without {missing} first: the order is "
                "on_step_begin(), backward, on_before_optimizer_step(), optimizer.step(), on_after_optimizer_step()"
            )
        for group in self.groups:
            group.before_optimizer_step(self.step)
        self._phase = _GRADS

    def on_after_optimizer_step(self) -> None:
        """Right after ``optimizer.step()``: re-zero pruned weights and count the step."""
        if self._phase != _GRADS:
            missing = "on_before_optimizer_step()" if self._phase == _STEPPING else "on_step_begin()"
            raise RuntimeError(
                f"on_after_optimizer_step() called at step {self.step} without {missing} first: pruned gradients "
                "were not masked and scores not updated"
            )
        for group in self.groups:
            group.apply_masks()
        self.step += 1
        self._phase = _READY

    def on_train_end(self) -> None:
        """Finish pending progressive blends; warn if training stopped before the schedule ended."""
        if self._phase != _READY:
            raise RuntimeError(
                f"on_train_end() called in the middle of step {self.step}: finish the step with "
                "on_after_optimizer_step() first"
            )
        for group in self.groups:
            group.finish()
        short = [g for g in self.groups if not g.locked and g.ops and self.step <= g.schedule.last_update_step]
        if short:
            warnings.warn(
                "prunelab: training ended at step "
                f"{self.step} before the last mask update of group(s) "
                + ", ".join(f"{g.index} (step {g.schedule.last_update_step})" for g in short)
                + ": the target sparsity was not reached",
                stacklevel=2,
            )

    def on_epoch_begin(self, epoch: int | None = None) -> None:
        """Accepted for INC-compatible loops; pruning follows optimizer steps, not epochs."""

    def on_epoch_end(self) -> None:
        """Accepted for INC-compatible loops; does nothing."""

    def on_step_end(self) -> None:
        """Accepted for INC-compatible loops; does nothing. It does NOT replace
        ``on_after_optimizer_step()`` (INC's documented loop called only this one and silently
        stopped pruning; here the next ``on_step_begin()`` raises instead)."""

    # ------------------------------------------------------------------------------- queries
    @property
    def current_sparsity(self) -> float:
        """Scheduled sparsity now, weighted over all groups' pruned weights (for progress bars)."""
        total = sum(group.numel for group in self.groups)
        if not total:
            return 0.0
        return sum(group.current_sparsity(self.step) * group.numel for group in self.groups) / total

    @property
    def needs_gradients(self) -> bool:
        """Whether a criterion reads gradients: a loop running passes only to feed the engine
        (calibration before a one-shot prune) may skip the backward pass when none does."""
        return any(not g.locked and g.ops and g.criterion.needs_grad for g in self.groups)

    def report(self) -> dict:
        """Measured sparsity (zeros counted in the weights) per op, per group and overall."""
        return build_report(self.model, self.groups, self.step)

    def pruning_steps(self) -> list[int]:
        """The optimizer steps at which a mask update prunes (every group's), ascending: where a
        training loop may restart its learning rate (``lr_rewinding``)."""
        steps = set()
        for group in self.groups:
            if not group.locked and group.ops and group.config.target_sparsity > 0:
                steps.update(group.schedule.pruning_steps)
        return sorted(steps)

    def kept_units(self) -> dict[str, dict[str, list[int]]]:
        """The structure the masks leave, for compaction (``prunelab.export``).

        ``{layer: {"heads": [kept head indices], "neurons": [kept neuron indices]}}``, keyed by the
        layer's module name (``"bert.encoder.layer.0"``), indices in the layer's original
        numbering, ascending. Only layers and kinds pruned by a ``head`` / ``neuron`` group appear;
        an empty list means the layer lost every unit of that kind. Read it after
        ``on_train_end()`` for the final structure (during a progressive blend it is the mask in
        force now).
        """
        kept: dict[str, dict[str, list[int]]] = {}
        for group in self.groups:
            if isinstance(group, CoupledGroup):
                for layer, kinds in group.kept_units().items():
                    kept.setdefault(layer, {}).update(kinds)
        return kept

    # ---------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Everything needed for an exact resume: masks, criterion scores, step, blend state."""
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "groups": [group.state_dict() for group in self.groups],
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore ``state_dict()`` output; the pruned weights are zeroed at once."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a prunelab pruning state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        if len(state["groups"]) != len(self.groups):
            raise ValueError(f"checkpoint has {len(state['groups'])} pruning groups, this config {len(self.groups)}")
        for group, saved in zip(self.groups, state["groups"]):
            group.load_state_dict(saved)
        self.step = int(state["step"])
        self._phase = _READY


def _module_shape(model: nn.Module, name: str) -> torch.Size:
    return model.get_submodule(name).weight.shape


def _fits_none_message(group: PruningGroup, matched: list[tuple[str, nn.Module, str]]) -> str:
    """Why a group with a target would prune nothing: the distinct shapes (``[out, in]``, as patterns see
    them) that its pattern does not divide."""
    shapes: list[list[int]] = []
    for _, module, kind in matched:
        view = OpView(kind, module.weight.shape)
        if [view.rows, view.cols] not in shapes:
            shapes.append([view.rows, view.cols])
    listing = ", ".join(str(shape) for shape in shapes[:_SHAPES_LISTED])
    if len(shapes) > _SHAPES_LISTED:
        listing += ", ..."
    pattern = group.pattern
    if isinstance(pattern, NInMPattern):
        advice = "choose a pattern whose M divides the input dim of the weight shapes"
    else:
        advice = "choose a pattern whose block divides the weight shapes"
    return (
        f"pruning group {group.index}: pattern {pattern.name} fits none of its {len(matched)} ops "
        f"(shapes {listing}); {advice}"
    )
