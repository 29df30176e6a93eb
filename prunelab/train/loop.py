"""The fine-tuning loop: accelerate (devices, mixed precision, multi-GPU), AdamW, a transformers LR
schedule, dynamic padding, gradient accumulation, evaluation every epoch.

Pruning enters only through a callbacks object with the hook methods INC 2.x's
``compression_manager.callbacks`` has (``on_train_begin``, ``on_step_begin(step)``,
``on_before_optimizer_step``, ``on_after_optimizer_step``, ``on_train_end``), so the same loop
drives prunelab's engine or INC. Hooks run once per optimizer step; ``step`` counts optimizer steps.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from prunelab.tasks.base import Task, TaskData
from prunelab.train.batching import EXAMPLE_INDEX, IndexedCollator, IndexedDataset
from prunelab.train.evaluation import predict


@dataclass
class TrainConfig:
    """Training settings, named as in the reference scripts (``learning_rate`` ...)."""

    learning_rate: float
    num_train_epochs: int
    per_device_train_batch_size: int
    per_device_eval_batch_size: int
    weight_decay: float = 0.0
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
    targets) and ``train/loss`` (mean over the epoch's micro-batches)."""

    epoch: int
    step: int
    metrics: dict[str, float]
    logits: tuple[np.ndarray, ...]


class Trainer:
    """Owns the data loaders, optimizer and LR schedule for one model; ``fit`` trains it."""

    def __init__(self, model: torch.nn.Module, task: Task, data: TaskData, config: TrainConfig, accelerator):
        self.task = task
        self.data = data
        self.config = config
        self.accelerator = accelerator
        self.train_set = IndexedDataset(data.train)
        self.train_collator = IndexedCollator(data.collator)
        train_loader = DataLoader(
            self.train_set,
            batch_size=config.per_device_train_batch_size,
            shuffle=True,
            collate_fn=self.train_collator,
            generator=torch.Generator().manual_seed(config.seed),
        )
        eval_loader = DataLoader(data.eval, batch_size=config.per_device_eval_batch_size, collate_fn=data.collator)
        optimizer = torch.optim.AdamW(
            _parameter_groups(model, config.weight_decay), lr=config.learning_rate, betas=tuple(config.adam_betas)
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

    def fit(
        self,
        callbacks=None,
        distiller=None,
        on_evaluate: Callable[[Evaluation], None] | None = None,
    ) -> Evaluation:
        """Train for ``num_train_epochs``; returns the evaluation after the last epoch (taken after
        ``on_train_end``, so it measures the final weights)."""
        if distiller is not None:
            ordered = DataLoader(self.train_set, batch_size=self.config.per_device_eval_batch_size,
                                 collate_fn=self.train_collator)
            distiller.prepare(self.accelerator, ordered)
        if callbacks is not None:
            callbacks.on_train_begin()
        progress = tqdm(
            total=self.total_steps,
            desc="train",
            disable=not (self.config.progress_bar and self.accelerator.is_local_main_process),
        )
        step = 0
        evaluation = None
        for epoch in range(self.config.num_train_epochs):
            step, train_loss = self._train_epoch(step, callbacks, distiller, progress)
            if epoch == self.config.num_train_epochs - 1 and callbacks is not None:
                callbacks.on_train_end()
            evaluation = self.evaluate(epoch, step, train_loss)
            if on_evaluate is not None:
                on_evaluate(evaluation)
        progress.close()
        return evaluation

    def evaluate(self, epoch: int, step: int, train_loss: float) -> Evaluation:
        logits, eval_loss = predict(self.model, self.eval_loader, self.task, self.accelerator)
        metrics = {f"eval/{k}": v for k, v in self.task.compute_metrics(logits, self.data).items()}
        if eval_loss is not None:
            metrics["eval/loss"] = eval_loss
        metrics["train/loss"] = train_loss
        return Evaluation(epoch=epoch, step=step, metrics=metrics, logits=logits)

    def _train_epoch(self, step: int, callbacks, distiller, progress) -> tuple[int, float]:
        accumulation = self.config.gradient_accumulation_steps
        batches = len(self.train_loader)
        losses = []
        self.model.train()
        for micro, batch in enumerate(self.train_loader):
            opens_step = micro % accumulation == 0
            closes_step = (micro + 1) % accumulation == 0 or micro + 1 == batches
            if opens_step and callbacks is not None:
                callbacks.on_step_begin(step)
            example_index = batch.pop(EXAMPLE_INDEX)
            # Gradients of the micro-batches inside a step stay local (no all-reduce) until the last.
            with nullcontext() if closes_step else self.accelerator.no_sync(self.model):
                outputs = self.model(**batch)
                loss = outputs.loss
                if distiller is not None:
                    loss = loss + distiller.loss(outputs, batch, example_index)
                self.accelerator.backward(loss / accumulation)
            losses.append(loss.detach().float().item())
            if closes_step:
                self._optimizer_step(callbacks)
                step += 1
                progress.update(1)
                progress.set_postfix(self._progress_fields(np.mean(losses[-accumulation:]), callbacks))
        return step, float(np.mean(losses))

    def _optimizer_step(self, callbacks) -> None:
        # Pruning criteria read gradients: give them the true (unscaled) values under fp16
        # (clipping unscales them itself, and unscaling twice is an error).
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        else:
            self.accelerator.unscale_gradients()
        if callbacks is not None:
            callbacks.on_before_optimizer_step()
        self.optimizer.step()
        if callbacks is not None:
            callbacks.on_after_optimizer_step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()

    def _progress_fields(self, loss: float, callbacks) -> dict[str, str]:
        fields = {"loss": f"{loss:.4f}", "lr": f"{self.lr_scheduler.get_last_lr()[0]:.2e}"}
        sparsity = getattr(callbacks, "current_sparsity", None)
        if sparsity is not None:
            fields["sparsity"] = f"{sparsity:.3f}"
        return fields


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and LayerNorm weights (1-D) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
