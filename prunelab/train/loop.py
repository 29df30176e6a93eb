"""The fine-tuning loop: accelerate (devices, mixed precision, data parallel), AdamW, a transformers
LR schedule, dynamic padding, gradient accumulation, evaluation every epoch, checkpoints.

Everything that changes training enters through ``callbacks``, a list of peers (the pruning engine,
the distiller, INC's ``compression_manager.callbacks`` ...). Each may implement any of:

- ``on_fit_start(trainer)``: once, before training (the distiller moves its teacher here);
- INC 2.x's hooks ``on_train_begin()``, ``on_step_begin(step)``, ``on_before_optimizer_step()``,
  ``on_after_optimizer_step()``, ``on_train_end()``, once per optimizer step (``step`` counts
  optimizer steps);
- ``extra_loss(outputs, batch, example_index) -> Tensor``: a term added to the task loss;
  ``replaces_task_loss = True``: the loss is the sum of the ``extra_loss`` terms alone;
  ``forward_kwargs``: keywords the model's training forward gets (``output_hidden_states``);
- ``state_dict()`` / ``load_state_dict()``: saved in checkpoints and restored on resume;
- ``parameter_groups() -> list[dict]``: parameters the trainer's optimizer trains besides the
  model's (SimKD's projector), each group ``{"name", "params", "weight_decay" (default 0)}``. Such a
  callback is given to ``Trainer(callbacks=...)`` as well as to ``fit``: the optimizer is built
  with them, so the LR schedule, ``max_grad_norm`` (one norm over model and callback parameters),
  gradient accumulation and checkpoints (their AdamW state) apply to them as to the model's. DDP
  averages the gradients of the wrapped model only; the trainer averages the callbacks' across
  processes itself, once per optimizer step, before clipping. Every process must give them a
  gradient on the same steps (as DDP requires of the model's parameters). The callback keeps its
  parameters' values in its own ``state_dict``.
"""
from __future__ import annotations

import bisect
import math
import re
import signal
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from prunelab.errors import ConfigError, RunInterrupted
from prunelab.tasks.base import Task, TaskData
from prunelab.train.batching import EXAMPLE_INDEX, EpochShuffle, IndexedCollator, IndexedDataset
from prunelab.train.checkpointing import CheckpointPolicy, LoopPosition, read_parameter_groups, read_position
from prunelab.train.evaluation import predict
from prunelab.train.interrupts import StopOnSignal


@dataclass
class TrainConfig:
    """Training settings, named as in the reference scripts (``learning_rate`` ...)."""

    learning_rate: float
    num_train_epochs: int
    per_device_train_batch_size: int
    per_device_eval_batch_size: int
    weight_decay: float = 0.0
    # Regexes (re.search) of module names whose parameters get no weight decay (e.g. classifier).
    no_decay_modules: tuple[str, ...] = ()
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler_type: str = "linear"
    num_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    seed: int = 42
    progress_bar: bool = True


@dataclass
class Evaluation:
    """One evaluation: ``metrics`` holds ``eval/<name>``, ``eval/loss`` (when the eval set has
    targets) and ``train/loss`` (mean over the epoch's micro-batches, all processes)."""

    epoch: int
    step: int
    metrics: dict[str, float]
    logits: tuple[np.ndarray, ...]


# Keys of a callback's parameter group: no lr or betas of its own, so the trainer's schedule applies.
GROUP_KEYS = ("name", "params", "weight_decay")


class Trainer:
    """Owns the data loaders, optimizer and LR schedule for one model; ``fit`` trains it.
    callbacks: those whose ``parameter_groups()`` the optimizer trains too (module docstring)."""

    def __init__(self, model: torch.nn.Module, task: Task, data: TaskData, config: TrainConfig, accelerator,
                 callbacks: Sequence = ()):
        self.task = task
        self.data = data
        self.config = config
        self.accelerator = accelerator
        self.train_set = IndexedDataset(data.train)
        self.train_collator = IndexedCollator(data.collator)
        train_loader = DataLoader(
            self.train_set,
            batch_size=config.per_device_train_batch_size,
            sampler=EpochShuffle(len(self.train_set), config.seed),
            collate_fn=self.train_collator,
            # Only for the loader's own base seed, which would otherwise be drawn from the global
            # RNG that dropout uses (and shift dropout masks after a resume).
            generator=torch.Generator().manual_seed(config.seed),
        )
        eval_loader = DataLoader(data.eval, batch_size=config.per_device_eval_batch_size, collate_fn=data.collator)
        self.parameter_owners = [c for c in callbacks if c is not None and hasattr(c, "parameter_groups")]
        self.callback_groups = _callback_parameter_groups(self.parameter_owners, accelerator.device)
        self.callback_parameters = [p for group in self.callback_groups for p in group["params"]]
        optimizer = torch.optim.AdamW(
            [*_parameter_groups(model, config.weight_decay, config.no_decay_modules), *self.callback_groups],
            lr=config.learning_rate, betas=tuple(config.adam_betas),
        )
        self.model, self.optimizer, self.train_loader, self.eval_loader = accelerator.prepare(
            model, optimizer, train_loader, eval_loader
        )
        # The loader is sharded after prepare(), so count steps on this process's share.
        self.steps_per_epoch = math.ceil(len(self.train_loader) / config.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * config.num_train_epochs
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler_type,
            optimizer=self.optimizer,
            num_warmup_steps=config.num_warmup_steps,
            num_training_steps=self.total_steps,
        )
        self._registered = False

    def rewind_learning_rate(self, restarts: Sequence[int]) -> None:
        """Replace the LR schedule: linear decay to 0 from step 0 to the first of ``restarts``,
        then from each restart (back at the peak) to the next, the last one to the end of training."""
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, RewoundLinear(restarts, self.total_steps))

    def fit(
        self,
        callbacks: Sequence = (),
        on_evaluate: Callable[[Evaluation], None] | None = None,
        checkpoints: CheckpointPolicy | None = None,
        resume_from: Path | None = None,
        stop: StopOnSignal | None = None,
        gradient_steps: int = 0,
    ) -> Evaluation:
        """Train for ``num_train_epochs``; returns the evaluation after the last epoch (taken after
        ``on_train_end``, so it measures the final weights).

        checkpoints: when to write checkpoints; resume_from: a checkpoint directory to continue
        from (same config); stop: the run's signal handler, deferred while a step runs so that a
        SIGTERM ends the run after a checkpoint (raises ``RunInterrupted``).
        With ``num_train_epochs=0`` nothing is trained: ``gradient_steps`` backward passes feed
        the callbacks (a one-shot prune) and the model is evaluated. With training,
        ``gradient_steps > 0`` runs those passes and the prune before the first training step
        (wanda, sparsegpt: calibration passes), unless resuming; the callbacks count them as steps.
        """
        callbacks = [c for c in callbacks if c is not None]
        undeclared = [type(c).__name__ for c in callbacks
                      if hasattr(c, "parameter_groups") and not any(c is owner for owner in self.parameter_owners)]
        if undeclared:
            raise ValueError(f"callbacks {undeclared} declare parameter_groups(): give them to Trainer(callbacks=...), "
                             "whose optimizer trains those parameters")
        if self.config.num_train_epochs == 0:
            return self._without_training(callbacks, gradient_steps, on_evaluate)
        if checkpoints is not None or resume_from is not None:
            self._register_for_checkpointing(callbacks)
        position = LoopPosition()
        if resume_from is not None:
            self._check_parameter_groups(resume_from)
            self.accelerator.load_state(str(resume_from))
            position = read_position(resume_from)
        _call(callbacks, "on_fit_start", self)
        _call(callbacks, "on_train_begin")
        if gradient_steps and resume_from is None:
            self._passes_then_prune(callbacks, gradient_steps)
        progress = tqdm(
            total=self.total_steps,
            initial=position.step,
            desc="train",
            disable=not (self.config.progress_bar and self.accelerator.is_local_main_process),
        )
        last_epoch = self.config.num_train_epochs - 1
        evaluation = None
        deferring = stop.deferred() if (stop is not None and checkpoints is not None) else nullcontext()
        with deferring:
            for epoch in range(position.epoch, self.config.num_train_epochs):
                if epoch > position.epoch:
                    position = LoopPosition(step=position.step, epoch=epoch)
                position = self._train_epoch(position, callbacks, progress, checkpoints, stop)
                if epoch == last_epoch:
                    _call(callbacks, "on_train_end")
                evaluation = self.evaluate(epoch, position.step, self._mean_loss(position.epoch_losses))
                if on_evaluate is not None:
                    on_evaluate(evaluation)
                if checkpoints is not None and checkpoints.due(position.step, epoch_end=True):
                    checkpoints.save(self.accelerator, LoopPosition(step=position.step, epoch=epoch + 1),
                                     self._group_names())
        progress.close()
        if evaluation is None:  # resumed from a checkpoint written after the last epoch
            evaluation = self.evaluate(last_epoch, position.step, float("nan"))
        return evaluation

    def _without_training(self, callbacks, gradient_steps: int, on_evaluate) -> Evaluation:
        """``_passes_then_prune``, then the evaluation."""
        _call(callbacks, "on_fit_start", self)
        _call(callbacks, "on_train_begin")
        losses = self._passes_then_prune(callbacks, gradient_steps)
        _call(callbacks, "on_train_end")
        evaluation = self.evaluate(0, 0, self._mean_loss(losses))
        if on_evaluate is not None:
            on_evaluate(evaluation)
        return evaluation

    def _passes_then_prune(self, callbacks, steps: int) -> list[float]:
        """``steps`` steps of the hooks, each with a forward pass on a training batch and no
        optimizer step (with a backward pass when a callback ``needs_gradients``, else without
        gradients: wanda and sparsegpt read inputs only), then one more without a batch, where a
        one-shot prune scheduled at ``steps`` happens. Eval mode: no dropout in what a criterion reads."""
        self.model.eval()
        backward = any(getattr(c, "needs_gradients", False) for c in callbacks)
        batches = self._endless_batches()
        losses = []
        for step in tqdm(range(steps + 1), desc="prune", disable=not (self.config.progress_bar and steps
                                                                      and self.accelerator.is_local_main_process)):
            _call(callbacks, "on_step_begin", step)
            if step < steps:
                batch = next(batches)
                batch.pop(EXAMPLE_INDEX)
                with nullcontext() if backward else torch.no_grad():
                    loss = self.model(**batch).loss
                if backward:
                    self.accelerator.backward(loss)
                losses.append(loss.detach().float().item())
            _call(callbacks, "on_before_optimizer_step")
            _call(callbacks, "on_after_optimizer_step")
            self.optimizer.zero_grad()
        return losses

    def _endless_batches(self):
        """Training batches, epoch after epoch (each reshuffled as in training)."""
        epoch = 0
        while True:
            self.train_loader.set_epoch(epoch)
            yield from self.train_loader
            epoch += 1

    def evaluate(self, epoch: int, step: int, train_loss: float) -> Evaluation:
        logits, eval_loss = predict(self.model, self.eval_loader, self.task, self.accelerator)
        metrics = {f"eval/{k}": v for k, v in self.task.compute_metrics(logits, self.data).items()}
        if eval_loss is not None:  # a task's own eval loss (clm: token-weighted) is kept
            metrics.setdefault("eval/loss", eval_loss)
        metrics["train/loss"] = train_loss
        return Evaluation(epoch=epoch, step=step, metrics=metrics, logits=logits)

    def _train_epoch(self, position: LoopPosition, callbacks, progress, checkpoints, stop) -> LoopPosition:
        accumulation = self.config.gradient_accumulation_steps
        batches = len(self.train_loader)
        step, losses = position.step, list(position.epoch_losses)
        loader = self.train_loader
        if position.micro:
            loader = self.accelerator.skip_first_batches(self.train_loader, position.micro)
        loader.set_epoch(position.epoch)
        forward_kwargs = {k: v for c in callbacks for k, v in getattr(c, "forward_kwargs", {}).items()}
        replaced = any(getattr(c, "replaces_task_loss", False) for c in callbacks)
        self.model.train()
        for micro, batch in enumerate(loader, start=position.micro):
            opens_step = micro % accumulation == 0
            closes_step = (micro + 1) % accumulation == 0 or micro + 1 == batches
            if opens_step:
                _call(callbacks, "on_step_begin", step)
            example_index = batch.pop(EXAMPLE_INDEX)
            # Gradients of the micro-batches inside a step stay local (no all-reduce) until the last.
            with nullcontext() if closes_step else self.accelerator.no_sync(self.model):
                outputs = self.model(**batch, **forward_kwargs)
                extra = [c.extra_loss(outputs, batch, example_index) for c in callbacks if hasattr(c, "extra_loss")]
                loss = sum(extra[1:], extra[0]) if replaced else sum(extra, outputs.loss)
                self.accelerator.backward(loss / accumulation)
            losses.append(loss.detach().float().item())
            if not closes_step:
                continue
            self._optimizer_step(callbacks)
            step += 1
            progress.update(1)
            progress.set_postfix(self._progress_fields(np.mean(losses[-accumulation:]), callbacks))
            here = LoopPosition(step=step, epoch=position.epoch, micro=micro + 1, epoch_losses=losses)
            if stop is not None and checkpoints is not None and self._stop_requested(stop):
                saved = checkpoints.save(self.accelerator, here, self._group_names())
                raise RunInterrupted(
                    stop.signum,
                    f"{signal.Signals(stop.signum).name} received: stopped at step {step} of {self.total_steps} "
                    f"after writing checkpoint {saved}",
                )
            if checkpoints is not None and micro + 1 < batches and checkpoints.due(step, epoch_end=False):
                checkpoints.save(self.accelerator, here, self._group_names())
        return LoopPosition(step=step, epoch=position.epoch, micro=batches, epoch_losses=losses)

    def _optimizer_step(self, callbacks) -> None:
        self._average_callback_gradients()
        # Pruning criteria read gradients: give them the true (unscaled) values under fp16
        # (clipping unscales them itself, and unscaling twice is an error).
        if self.config.max_grad_norm:  # one norm over the model's and the callbacks' parameters
            self.accelerator.clip_grad_norm_([*self.model.parameters(), *self.callback_parameters],
                                             self.config.max_grad_norm)
        else:
            self.accelerator.unscale_gradients()
        _call(callbacks, "on_before_optimizer_step")
        self.optimizer.step()
        _call(callbacks, "on_after_optimizer_step")
        self.lr_scheduler.step()
        self.optimizer.zero_grad()

    def _average_callback_gradients(self) -> None:
        """DDP averages the gradients of the model it wraps, not those of the callbacks' parameters
        (outside it): they are averaged here, in one collective, after the step's last micro-batch
        (scaled under fp16, as DDP averages them; the optimizer's unscaling covers every group)."""
        grads = [p.grad for p in self.callback_parameters if p.grad is not None]
        if self.accelerator.num_processes == 1 or not grads:
            return
        mean = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
        for grad, part in zip(grads, mean.split([g.numel() for g in grads])):
            grad.copy_(part.view_as(grad))

    def _group_names(self) -> list[str]:
        return [group["name"] for group in self.callback_groups]

    def _check_parameter_groups(self, checkpoint: Path) -> None:
        """The checkpoint's optimizer state must hold the same callback groups as this optimizer."""
        saved = read_parameter_groups(checkpoint)
        if saved != self._group_names():
            raise ConfigError(
                f"resume_from_checkpoint={checkpoint}: its optimizer trained the callback parameter groups {saved}, "
                f"this run's trains {self._group_names()} (a distill=simkd checkpoint written before its projector "
                "joined the trainer's optimizer cannot be resumed); start the run again"
            )

    def _register_for_checkpointing(self, callbacks) -> None:
        if self._registered:
            return
        stateful = [c for c in callbacks if hasattr(c, "state_dict") and hasattr(c, "load_state_dict")]
        self.accelerator.register_for_checkpointing(self.lr_scheduler, *stateful)
        self._registered = True

    def _stop_requested(self, stop: StopOnSignal) -> bool:
        """Whether any process got a signal: all of them must checkpoint and stop at the same step."""
        flag = torch.tensor([float(stop.requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _mean_loss(self, losses: list[float]) -> float:
        mean = torch.tensor([float(np.mean(losses)) if losses else float("nan")], device=self.accelerator.device)
        return float(self.accelerator.reduce(mean, reduction="mean").item())

    def _progress_fields(self, loss: float, callbacks) -> dict[str, str]:
        fields = {"loss": f"{loss:.4f}", "lr": f"{self.lr_scheduler.get_last_lr()[0]:.2e}"}
        for callback in callbacks:
            sparsity = getattr(callback, "current_sparsity", None)
            if sparsity is not None:
                fields["sparsity"] = f"{sparsity:.3f}"
        return fields


class RewoundLinear:
    """LR factor of ``Trainer.rewind_learning_rate`` at an optimizer step (picklable for checkpoints)."""

    def __init__(self, restarts: Sequence[int], total_steps: int):
        self.bounds = sorted({0, *(s for s in restarts if 0 < s < total_steps)}) + [total_steps]

    def __call__(self, step: int) -> float:
        segment = max(bisect.bisect_right(self.bounds, step) - 1, 0)
        start, end = self.bounds[segment], self.bounds[min(segment + 1, len(self.bounds) - 1)]
        return max(0.0, (end - step) / max(1, end - start))


def _call(callbacks, hook: str, *args) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


def no_decay_patterns(model: torch.nn.Module, no_decay_modules: Sequence[str]) -> list[re.Pattern]:
    """The ``no_decay_modules`` regexes compiled; ``ConfigError`` for one that is no regex or that
    finds no module of ``model`` (a typo would silently decay what it meant to spare)."""
    patterns = []
    for pattern in no_decay_modules:
        try:
            patterns.append(re.compile(pattern))
        except re.error as error:
            raise ConfigError(
                f"no_decay_modules={list(no_decay_modules)}: {pattern!r} is not a regular expression ({error})"
            ) from None
        if not any(patterns[-1].search(name) for name, _ in model.named_modules()):
            raise ConfigError(f"no_decay_modules={list(no_decay_modules)}: {pattern!r} matches no module of the model")
    return patterns


def _callback_parameter_groups(callbacks, device: torch.device) -> list[dict]:
    """The callbacks' ``parameter_groups()``, without weight decay unless a group gives it; their
    parameters are moved to ``device`` now, in place as ``Module.to`` does (the callback's modules
    hold the moved tensors), so that a resume loads their optimizer state onto that device."""
    groups = []
    for callback in callbacks:
        for group in callback.parameter_groups():
            if "name" not in group or "params" not in group or not set(group) <= set(GROUP_KEYS):
                raise ValueError(f"{type(callback).__name__}.parameter_groups(): a group has keys {sorted(group)}; "
                                 f"give name and params, optionally weight_decay (allowed: {list(GROUP_KEYS)})")
            params = list(group["params"])
            for p in params:
                p.data = p.data.to(device)
            groups.append({"weight_decay": 0.0, **group, "params": params})
    return groups


def _parameter_groups(model: torch.nn.Module, weight_decay: float, no_decay_modules: Sequence[str] = ()) -> list[dict]:
    """Weight decay on matrices only; biases and LayerNorm weights (1-D) are not decayed, nor the
    parameters of modules whose name a ``no_decay_modules`` regex finds (``re.search``)."""
    patterns = no_decay_patterns(model, no_decay_modules)

    def decayed(name: str, p: torch.nn.Parameter) -> bool:
        module = name.rpartition(".")[0]
        return p.dim() >= 2 and not any(pattern.search(module) for pattern in patterns)

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in named if decayed(name, p)], "weight_decay": weight_decay},
        {"params": [p for name, p in named if not decayed(name, p)], "weight_decay": 0.0},
    ]
