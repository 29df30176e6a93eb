"""A group of ops pruned once from the inputs they see: ``pruning_type`` wanda or sparsegpt.

Where the inputs come from: every forward pass of the model between the first ``on_step_begin``
and the one-shot update at ``start_step`` (the app runs ``ceil(calibration_samples / batch)`` of
them on training batches, in eval mode and without gradients, before training). While those
steps run, a forward hook on each op folds its input ``X`` into a float32 statistic
(``hessian.add_inputs``: ``X X^T`` for sparsegpt, ``||X_j||^2`` for wanda), one batch at a time;
no activation is kept. A forward pre-hook on the model reads the batch size and the
``attention_mask`` of each call: at most ``calibration_samples`` examples are counted (the first
rows of a batch that crosses the limit), and padding tokens are left out wherever an op's input
is ``[batch, tokens, in]`` as the mask is ``[batch, tokens]`` (inputs of any other shape count
every position). Under data parallelism each process gathers ``ceil(calibration_samples /
processes)`` examples and the statistics are summed over processes at the update (an all-reduce),
so every process computes the same masks. The hooks are removed at the update and the statistics
dropped: after it, the masks stay as they are (masks only grow; a one-shot schedule has no
further update), so training after it fine-tunes with the masks locked.

Cost: one forward pass per calibration batch (no backward), ``X X^T`` per op per batch
(``2 * tokens * in^2`` flops) and, held until the update, ``4 * in^2`` bytes per op for
sparsegpt (BERT-base: about 0.6 GB), ``4 * in`` for wanda.

Order: by default each op is pruned from the dense model's inputs (one pass for all layers).
``sequential: true`` is the papers' reference order: the calibration passes only record the inputs
of the first layer of the stack (the ``nn.ModuleList`` that holds every pruned op: BERT's
``encoder.layer``, Llama's ``layers``, GPT-2's ``h``), and the update runs the stack one layer at a
time on them: gather the layer's op statistics, prune its ops, run it again pruned, and hand its
outputs to the next layer, so every layer is calibrated on the outputs of the pruned layers before
it. Cost: about two forward passes over the calibration data in all (a pruned layer runs twice),
and the first layer's inputs held until the update (tokens x hidden x 4 bytes: 64 x 512 tokens of
SmolLM2, 75 MB).
"""
from __future__ import annotations

import torch
from torch import nn

from prunelab.sparsity import hessian
from prunelab.sparsity.config import GroupConfig
from prunelab.sparsity.patterns import NInMPattern
from prunelab.sparsity.pruner import PrunedOp, PruningGroup


class CalibratedGroup(PruningGroup):
    """``PruningGroup`` whose state is a statistic of each op's inputs (``self.statistics``),
    gathered by forward hooks before its one-shot update."""

    def __init__(self, index: int, config: GroupConfig, matched: list[tuple[str, nn.Module, str]], model: nn.Module):
        super().__init__(index, config, matched)
        self.model = model
        self.n_m = (self.pattern.n, self.pattern.m) if isinstance(self.pattern, NInMPattern) else None
        self.statistics: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.examples = 0  # examples counted on this process
        self._handles: list = []
        self._take: int | None = None  # rows of the current batch still counted (None: every row)
        self._batch: int | None = None
        self._padding: torch.Tensor | None = None  # [take, tokens] bool, True = a real token
        self.sequential = bool(config.sequential)
        # sequential: the stack of layers, the ops of each layer, and the first layer's recorded
        # calls (args, kwargs, take, batch, padding), one per calibration batch
        self._stack, self._ops_by_layer = _layer_stack(model, self.ops, config.pruning_type) if self.sequential and self.ops else (None, {})
        self._calls: list[tuple] = []
        self._autocast = ("cpu", torch.get_autocast_dtype("cpu"), False)  # (device type, dtype, enabled) of the calls

    # ------------------------------------------------------------------------------ hooks
    @torch.no_grad()
    def step_begin(self, step: int) -> None:
        if step < self.schedule.start and not self.masked:
            self._listen()
            return
        self._stop_listening()
        super().step_begin(step)

    def finish(self) -> None:
        self._stop_listening()
        super().finish()

    def _limit(self) -> int:
        """Examples this process counts: ``calibration_samples`` shared among the processes."""
        processes = torch.distributed.get_world_size() if _distributed() else 1
        return -(-self.config.calibration_samples_or_default // processes)

    def _listen(self) -> None:
        if self._handles or not self.ops:
            return
        if self.sequential:
            self._handles.append(self._stack[0].register_forward_pre_hook(self._record_call, with_kwargs=True))
        else:
            for op in self.ops:
                self._handles.append(self._listen_to(op))
        self._handles.append(self.model.register_forward_pre_hook(self._before_model, with_kwargs=True))

    def _listen_to(self, op: PrunedOp):
        if op.name not in self.statistics:
            self.statistics[op.name] = self.criterion.input_statistic(op.view.cols, op.weight.device)
            self.tokens[op.name] = 0
        return op.module.register_forward_hook(self._gather(op))

    def _record_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._take != 0:
            self._calls.append((_detached(args), _detached(kwargs), self._take, self._batch, self._padding))
            device = next(module.parameters()).device.type
            # the layers run again at the update as they ran here (mixed precision: under the same autocast)
            self._autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))

    def _stop_listening(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before_model(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        tensors = [v for v in (mask, *args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() >= 1]
        self._batch = tensors[0].shape[0] if tensors else None
        if self._batch is None:  # nothing tells the examples apart: every input counts
            self._take, self._padding = None, None
            return
        self._take = max(0, min(self._batch, self._limit() - self.examples))
        self.examples += self._take
        self._padding = None if mask is None else mask[: self._take].bool()

    def _gather(self, op: PrunedOp):
        def hook(module: nn.Module, args: tuple, output) -> None:
            if self._take == 0 or not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0].detach()
            if self._take is not None and x.dim() >= 2 and x.shape[0] == self._batch:
                x = x[: self._take]
                if self._padding is not None and x.shape[:-1] == self._padding.shape:
                    x = x[self._padding]
            x = x.reshape(-1, x.shape[-1])
            hessian.add_inputs(self.statistics[op.name], x)
            self.tokens[op.name] += x.shape[0]

        return hook

    # ------------------------------------------------------------------------ mask updates
    @torch.no_grad()
    def update_masks(self, sparsity: float, step: int) -> None:
        self._stop_listening()
        if not self.ops:
            return
        if self.sequential:
            self._prune_layer_by_layer(sparsity, step)
        else:
            self._sum_over_processes(self.ops)
            self._prune(self.ops, sparsity, step)
        self.statistics, self.tokens = {}, {}
        self.masked = True
        self.apply_masks()

    def _prune_layer_by_layer(self, sparsity: float, step: int) -> None:
        """Each layer of the stack in turn: its ops' statistics from the recorded calls, its ops
        pruned, then the calls moved on to the next layer through the pruned layer."""
        calls, self._calls = self._calls, []
        training = self._stack.training
        self._stack.eval()
        try:
            last = max(self._ops_by_layer)
            for index in range(last + 1):
                layer, ops = self._stack[index], self._ops_by_layer.get(index, [])
                if ops:
                    handles = [self._listen_to(op) for op in ops]
                    try:
                        with self._as_recorded():
                            for args, kwargs, self._take, self._batch, self._padding in calls:
                                layer(*args, **kwargs)
                    finally:
                        for handle in handles:
                            handle.remove()
                    self._sum_over_processes(ops)
                    self._prune(ops, sparsity, step)
                    torch._foreach_mul_([op.weight for op in ops], [op.mask for op in ops])  # the next layer sees this one pruned
                if index < last:
                    with self._as_recorded():
                        calls = [(*_next_layer_inputs(layer, args, kwargs), *rest) for args, kwargs, *rest in calls]
        finally:
            self._stack.train(training)

    def _as_recorded(self) -> torch.autocast:
        """The autocast state the recorded calls ran under (the mask solve itself runs outside it)."""
        device, dtype, enabled = self._autocast
        return torch.autocast(device, dtype=dtype, enabled=enabled)

    def _prune(self, ops: list[PrunedOp], sparsity: float, step: int) -> None:
        for op in ops:
            if not self.tokens.get(op.name):
                raise RuntimeError(
                    f"pruning group {self.index} ({self.config.pruning_type}): no input reached {op.name} in the "
                    f"forward passes before the mask update at step {step}; run the model on calibration batches "
                    "between on_step_begin() calls before start_step"
                )
            weight, keep = op.view.to_2d(op.weight), op.view.to_2d(op.mask)
            try:
                updated, kept = self.criterion.prune(
                    weight, keep, self.statistics[op.name], self.tokens[op.name], sparsity, self.n_m, self.config
                )
            except ValueError as error:
                raise ValueError(f"pruning group {self.index}, op {op.name}: {error}") from None
            op.mask.copy_(op.view.from_2d(kept.to(op.mask.dtype)))
            if updated is not None:
                op.weight.copy_(op.view.from_2d(updated).to(op.weight.dtype))
            pruned = int((~kept).sum())
            op.pruned_units = op.units if self.n_m is not None else pruned

    def _sum_over_processes(self, ops: list[PrunedOp]) -> None:
        if not _distributed() or torch.distributed.get_world_size() == 1:
            return
        for op in ops:
            torch.distributed.all_reduce(self.statistics[op.name])
            count = torch.tensor([float(self.tokens[op.name])], device=op.weight.device)
            torch.distributed.all_reduce(count)
            self.tokens[op.name] = int(count.item())

    # -------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {**super().state_dict(), "examples": self.examples}

    def load_state_dict(self, saved: dict) -> None:
        super().load_state_dict(saved)
        self.examples = int(saved.get("examples", 0))

    def _op_state(self, op: PrunedOp) -> dict:
        statistic = self.statistics.get(op.name)
        return {**super()._op_state(op), "inputs": None if statistic is None else statistic.cpu(),
                "tokens": self.tokens.get(op.name, 0)}

    def _load_op(self, op: PrunedOp, entry: dict) -> None:
        super()._load_op(op, entry)
        self.statistics.pop(op.name, None)
        self.tokens.pop(op.name, None)
        if entry.get("inputs") is not None:
            self.statistics[op.name] = entry["inputs"].to(op.weight.device)
            self.tokens[op.name] = int(entry["tokens"])


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _layer_stack(model: nn.Module, ops: list[PrunedOp], pruning_type: str) -> tuple[nn.ModuleList, dict[int, list[PrunedOp]]]:
    """The outermost ``nn.ModuleList`` holding every op, and the ops of each of its layers."""
    lists = sorted((name for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and name),
                   key=lambda name: name.count("."))
    stacks, by_layer = set(), {}
    for op in ops:
        found = next((name for name in lists if op.name.startswith(name + ".")
                      and op.name[len(name) + 1:].split(".")[0].isdigit()), None)
        if found is None:
            raise ValueError(f"pruning_type={pruning_type!r} with sequential=true prunes the model's stack of layers "
                             f"(an nn.ModuleList) one layer at a time, but {op.name} is in no such stack; "
                             "exclude it (excluded_op_names) or set sequential=false")
        stacks.add(found)
        by_layer.setdefault(int(op.name[len(found) + 1:].split(".")[0]), []).append(op)
    if len(stacks) > 1:
        raise ValueError(f"pruning_type={pruning_type!r} with sequential=true runs one stack of layers, but the pruned "
                         f"ops lie in {len(stacks)}: {', '.join(sorted(stacks))}; prune one (op_names) or set sequential=false")
    return model.get_submodule(stacks.pop()), by_layer


def _detached(value):
    """``value`` with every tensor in it (in tuples, lists, dicts) detached: a recorded call."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(item) for item in value)
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    return value


def _next_layer_inputs(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call of the next layer: this one's call with its hidden states replaced by its output."""
    output = layer(*args, **kwargs)
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}
