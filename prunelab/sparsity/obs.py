"""A group of ops pruned by the Optimal BERT Surgeon (``pruning_type: obs``; Kurtic et al. 2022).

Where the gradients come from: the training steps themselves. Each mask update is split into
``num_recomputations`` sub-updates ``num_grads`` optimizer steps apart, ending at the update's
step; the gradients of the ``num_grads`` steps before a sub-update (after clipping, all-reduced
under data parallelism, so every process builds the same Fisher and the same masks) build a fresh
block-diagonal Fisher (``fisher.add_gradients``, 16 gradients at a time), inverted once per
sub-update, which scores the units and moves the kept weights when they are pruned, and is then
dropped. This costs no extra forward or backward pass: the price is the outer products inside
those windows and a few B x B Cholesky factorisations per block per sub-update. A prune without training (``num_train_epochs=0`` in the app) runs the gradient steps
without optimizer steps, which is the reference's dedicated pass over training batches.

Layout: each op's ``[out, in]`` matrix is flattened with every pruning unit contiguous (an NxM
block's N*M weights in a row; an N:M group's M inputs are already adjacent), then cut into
blocks of ``block_size`` (a multiple of the unit), the last one padded with coordinates that
never carry a gradient or a weight. N:M groups choose their N weights by single-weight OBS scores
(the pattern's comparison network); the weight update then removes the chosen weights jointly.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from prunelab.sparsity import fisher
from prunelab.sparsity.config import GroupConfig, obs_window
from prunelab.sparsity.patterns import BlockPattern, NInMPattern
from prunelab.sparsity.pruner import PrunedOp, PruningGroup

_GIB = 2**30
# Gradients folded into the Fisher at once: one batched G G^T reads the Fisher once for
# 16 gradients (measured ~7x less time per gradient than rank-1 on CPU; rank 32 was slower again).
GRADIENT_CHUNK = 16
DEFAULT_BLOCK = 50


class ObsGroup(PruningGroup):
    """``PruningGroup`` whose criterion state is a block-diagonal Fisher per op (``op.state``,
    ``[blocks, B, B]``, present only inside a gradient window)."""

    def __init__(self, index: int, config: GroupConfig, matched: list[tuple[str, nn.Module, str]]):
        super().__init__(index, config, matched)
        if self.pattern.coupled or not isinstance(self.pattern, (BlockPattern, NInMPattern)):
            raise ValueError(f"pruning_type='obs' prunes 1x1, NxM, N:M, 1xchannel and channelx1 patterns, not {self.pattern.name!r}")
        self.settings = config.obs_settings
        self.num_grads, self.recomputations = obs_window(config)
        self.block_sizes = {op.name: self._block_size(op) for op in self.ops}
        # Gradients seen but not yet in the Fisher, per op: a [blocks, B, GRADIENT_CHUNK] buffer
        # (written in place: no stacked copy) and how many of its columns are filled.
        self._pending: dict[str, tuple[torch.Tensor, int]] = {}
        self._check_memory()

    def _block_size(self, op: PrunedOp) -> int:
        """B of ``op``: ``obs.block_size``, which must hold whole units; unset, the smallest
        multiple of the unit from DEFAULT_BLOCK (50, oBERT's, for unstructured pruning)."""
        unit, given = self._unit(op), self.settings.block_size
        if given is None:
            return -(-DEFAULT_BLOCK // unit) * unit
        if given % unit:
            raise ValueError(
                f"obs.block_size={given} must be a multiple of the pattern's unit: {self.pattern.name} on "
                f"{op.name} [{op.view.rows}, {op.view.cols}] prunes {unit} weights together (unset it to use "
                f"{-(-DEFAULT_BLOCK // unit) * unit})"
            )
        return given

    # ------------------------------------------------------------------------------ layout
    def _unit(self, op: PrunedOp) -> int:
        """Consecutive coordinates of one unit in the flat layout (an N:M group's M)."""
        if isinstance(self.pattern, NInMPattern):
            return self.pattern.m
        return op.unit_weight

    def _blocks(self, op: PrunedOp) -> int:
        return -(-op.numel // self.block_sizes[op.name])

    def _flat(self, op: PrunedOp, matrix: torch.Tensor) -> torch.Tensor:
        """``[rows, cols]`` -> ``[blocks, B]`` float32, units contiguous, zero padded."""
        if isinstance(self.pattern, BlockPattern):
            rows, cols = op.view.rows, op.view.cols
            block_rows, block_cols = self.pattern.block(rows, cols)
            matrix = matrix.reshape(rows // block_rows, block_rows, cols // block_cols, block_cols).permute(0, 2, 1, 3)
        flat = matrix.reshape(-1).to(torch.float32, copy=True)  # callers write into it
        size = self.block_sizes[op.name]
        padding = self._blocks(op) * size - op.numel
        if padding:
            flat = torch.cat([flat, flat.new_zeros(padding)])
        return flat.view(-1, size)

    def _unflat(self, op: PrunedOp, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of ``_flat``: ``[rows, cols]``."""
        flat = blocks.reshape(-1)[: op.numel]
        rows, cols = op.view.rows, op.view.cols
        if isinstance(self.pattern, BlockPattern):
            block_rows, block_cols = self.pattern.block(rows, cols)
            grid = flat.view(rows // block_rows, cols // block_cols, block_rows, block_cols)
            return grid.permute(0, 2, 1, 3).reshape(rows, cols)
        return flat.view(rows, cols)

    # ---------------------------------------------------------------------------- memory
    def fisher_bytes(self) -> int:
        """The Fisher inverses of every op held at once during a window."""
        return sum(fisher.inverse_bytes(op.numel, self.block_sizes[op.name]) for op in self.ops)

    def window_bytes(self) -> int:
        """What a gradient window holds: ``fisher_bytes`` and up to GRADIENT_CHUNK pending gradients."""
        weights = sum(self._blocks(op) * self.block_sizes[op.name] for op in self.ops) * 4  # float32 gradients
        return self.fisher_bytes() + GRADIENT_CHUNK * weights

    def peak_bytes(self) -> int:
        """``window_bytes`` plus the largest op's float64 temporaries of a sub-update (its Cholesky
        factor and inverse; then the B x B systems and theirs): 3 float64 copies of its Fisher."""
        largest = max((fisher.inverse_bytes(op.numel, self.block_sizes[op.name]) for op in self.ops), default=0)
        return self.window_bytes() + 3 * largest

    def _check_memory(self) -> None:
        if not self.ops:
            return
        device = self.ops[0].weight.device
        free = _free_bytes(device)
        need = self.peak_bytes()
        if free is not None and need > free:
            weights = sum(op.numel for op in self.ops)
            sizes = sorted(set(self.block_sizes.values()))
            raise ValueError(
                f"obs: the Fisher inverses need about {need / _GIB:.2f} GiB ({weights} weights x block_size "
                f"{'/'.join(map(str, sizes))} x {fisher.BYTES} bytes, plus {(need - self.fisher_bytes()) / _GIB:.2f} GiB while pruning) but "
                f"{free / _GIB:.2f} GiB is free on {device}: lower obs.block_size (memory grows linearly with it)"
            )

    # ---------------------------------------------------------------------------- windows
    def _next_update(self, step: int) -> tuple[int, int] | None:
        """``(k, step of update k)`` for the first pruning update at or after ``step``."""
        schedule = self.schedule
        if schedule.last_index == 0:
            return (0, schedule.start) if step <= schedule.start else None
        first = 0 if schedule.initial > 0 else 1  # update 0 prunes only to a non-zero initial sparsity
        k = max(first, -(-(step - schedule.start) // schedule.frequency))
        return (k, schedule.start + k * schedule.frequency) if k <= schedule.last_index else None

    def _sub_update_target(self, step: int) -> float | None:
        """The sparsity of the sub-update at ``step``, if one falls there."""
        found = self._next_update(step)
        if found is None:
            return None
        k, update_step = found
        before, rest = divmod(update_step - step, self.num_grads)
        if rest or before >= self.recomputations:
            return None
        schedule = self.schedule
        previous = schedule.sparsity_at_update(k - 1) if k > 0 else 0.0
        done = (self.recomputations - before) / self.recomputations
        return previous + (schedule.sparsity_at_update(k) - previous) * done

    def _observes(self, step: int) -> bool:
        found = self._next_update(step + 1)
        return found is not None and found[1] - step <= self.num_grads * self.recomputations

    # ------------------------------------------------------------------------------ hooks
    @torch.no_grad()
    def step_begin(self, step: int) -> None:
        target = self._sub_update_target(step)
        if target is not None and target > 0:
            self.update_masks(target, step)

    def _observe(self, op: PrunedOp) -> None:
        """Add ``op``'s gradient to its pending buffer; fold the buffer in when it is full."""
        if op.state is None:
            size = self.block_sizes[op.name]
            op.state = fisher.damped_fisher(self._blocks(op), size, self.settings.damp, op.weight.device)
        buffer, count = self._pending.get(op.name) or (op.state.new_empty(*op.state.shape[:2], GRADIENT_CHUNK, dtype=torch.float32), 0)
        buffer[:, :, count] = self._flat(op, op.view.to_2d(op.weight.grad))
        self._pending[op.name] = (buffer, count + 1)
        if count + 1 == GRADIENT_CHUNK:
            self._flush(op)

    def _flush(self, op: PrunedOp) -> None:
        """Fold ``op``'s pending gradients into its Fisher in one batched step."""
        buffer, count = self._pending.get(op.name) or (None, 0)
        if count:
            fisher.add_gradients(op.state, buffer[:, :, :count], self.num_grads)
            self._pending[op.name] = (buffer, 0)

    # ------------------------------------------------------------------------ mask updates
    @torch.no_grad()
    def update_masks(self, sparsity: float, step: int) -> None:
        missing = [op.name for op in self.ops if op.state is None]
        if missing:
            raise RuntimeError(
                f"pruning group {self.index} (obs): no gradients reached {missing[0]} in the {self.num_grads} steps "
                f"before the mask update at step {step}; obs needs on_before_optimizer_step() after loss.backward()"
            )
        for op in self.ops:
            self._flush(op)
            op.state = fisher.inverse(op.state)  # from here to the end of the update, the state is F^-1
        self._pending.clear()
        before = [self._flat(op, op.view.to_2d(op.weight)) for op in self.ops] if self.settings.update_weights else None
        super().update_masks(sparsity, step)
        if before is not None:
            for op, weight in zip(self.ops, before):
                pruned = self._flat(op, op.view.to_2d(op.mask)).eq_(0)
                pruned.view(-1)[op.numel :] = 0  # padding is no coordinate of the op
                corrected = weight.add_(fisher.obs_update(op.state, weight, pruned))
                op.weight.copy_(op.view.from_2d(self._unflat(op, corrected)).to(op.weight.dtype))
            self.apply_masks()  # pruned weights land on exact zeros (the correction leaves ~1e-7)
        for op in self.ops:
            op.state = None
        self._pending.clear()  # the buffers go with the inverses: the next window starts afresh

    def _score(self, op: PrunedOp, out: torch.Tensor) -> object:
        n_in_m = isinstance(self.pattern, NInMPattern)  # scored per weight, see the module docstring
        scores = fisher.unit_scores(op.state, self._flat(op, op.view.to_2d(op.weight)), 1 if n_in_m else self._unit(op))
        if n_in_m:
            state = scores[: op.numel].view(op.view.rows, op.view.cols)
        else:
            block_rows, block_cols = self.pattern.block(op.view.rows, op.view.cols)
            state = scores[: op.units].view(op.view.rows // block_rows, op.view.cols // block_cols)
        return self.pattern.unit_scores(state, op.view.to_2d(op.mask), out)


    # -------------------------------------------------------------------------- checkpoint
    def _op_state(self, op: PrunedOp) -> dict:
        buffer, count = self._pending.get(op.name) or (None, 0)
        return {**super()._op_state(op), "pending": buffer[:, :, :count].clone().cpu() if count else None}

    def _load_op(self, op: PrunedOp, entry: dict) -> None:
        super()._load_op(op, entry)
        self._pending.pop(op.name, None)
        pending = entry.get("pending")
        if pending is not None:
            buffer = op.state.new_empty(*op.state.shape[:2], GRADIENT_CHUNK, dtype=torch.float32)
            buffer[:, :, : pending.shape[2]] = pending.to(buffer.device)
            self._pending[op.name] = (buffer, pending.shape[2])


def _free_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return None if pages is None else pages * os.sysconf("SC_PAGE_SIZE")
