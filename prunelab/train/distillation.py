"""Knowledge distillation from a frozen teacher: the ``distill`` config group.

Every option is a training-loop callback (see ``prunelab.train.loop``) built on ``TeacherDistiller``:
a frozen teacher (by default a copy of the student's starting weights: the dense fine-tuned model
being pruned) moved to the training device, whose targets are computed per batch or, with
``precompute``, once before training and looked up by example index. With ``replace_task_loss``
the loop trains on the distillation term alone (``replaces_task_loss``), as INC's examples did.

``kd`` (``KnowledgeDistiller``, here): loss_weight * mean over the task's logit tensors of
KL(teacher || student) on softmax at ``temperature``, scaled by T^2 (one-output regression heads use
MSE instead). Per-token logits (a task's ``per_token_outputs``, e.g. SQuAD start/end, [batch, seq])
ignore padding positions, so teacher logits precomputed under one padding give the same loss under any other.
Per-token distributions (a task's ``token_distributions``: token labels, a vocabulary; [batch, seq, classes])
give one KL per real token, averaged over the tokens.
``hidden_mse`` and ``simkd`` (feature distillation) live in ``prunelab.train.feature_distillation``.
"""
from __future__ import annotations

import copy

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from prunelab.errors import ConfigError
from prunelab.tasks.base import Task
from prunelab.train.batching import EXAMPLE_INDEX

DEFAULT_LOSS_WEIGHT = 1.0  # loss_weight when the config leaves it null
# Logit given to padding positions: softmax weight ~0 without the NaNs -inf brings into KL.
PADDING_LOGIT = -1.0e4


def no_distillation(task: Task, student: torch.nn.Module) -> None:
    """``distill=none``: the run trains on the task loss alone (it declares no ``distils``)."""
    return None


class TeacherDistiller:
    """What every distiller shares. teacher: a model directory; null = a frozen copy of the
    student's starting weights. precompute: run the teacher once over the training set before
    training and look its targets up by example index instead of a teacher pass per step.
    replace_task_loss: the loop trains on ``extra_loss`` alone instead of task loss + extra_loss.

    A subclass gives ``_teacher_targets(batch)`` (a tuple of [batch, ...] tensors, no gradient) and
    ``extra_loss``; ``forward_kwargs`` are passed to the student's forward by the loop."""

    distils = True  # the config checks read this: distill_loss_weight and training have an effect
    forward_kwargs: dict = {}
    fill_value = 0.0  # fills stored per-token targets past each batch's length

    def __init__(self, task: Task, student: torch.nn.Module, teacher: str | None, loss_weight: float | None,
                 precompute: bool, replace_task_loss: bool):
        if loss_weight is not None and not loss_weight > 0:  # a negative weight would push the student away
            raise ConfigError(f"distill.loss_weight={loss_weight}: must be > 0 (for no distillation, use distill=none)")
        self.task = task
        self.loss_weight = DEFAULT_LOSS_WEIGHT if loss_weight is None else loss_weight
        self.precompute = precompute
        self.replaces_task_loss = replace_task_loss
        self.teacher_source = teacher  # the directory given; None: the copy of the student
        self.teacher = copy.deepcopy(student) if teacher is None else _load_teacher(task, teacher)
        self.teacher.eval().requires_grad_(False)
        self.accelerator = None
        self.stored: tuple[torch.Tensor, ...] | None = None

    def on_fit_start(self, trainer) -> None:
        """Training-loop hook: prepare on the trainer's device, over its training set in order."""
        ordered = DataLoader(trainer.train_set, batch_size=trainer.config.per_device_eval_batch_size,
                             collate_fn=trainer.train_collator)
        self.prepare(trainer.accelerator, ordered)

    def prepare(self, accelerator, ordered_loader: DataLoader) -> None:
        """Move the teacher to the training device; precompute its targets when asked.

        ordered_loader: the training set in dataset order, batches carrying ``example_index``.
        """
        self.accelerator = accelerator
        self.teacher.to(accelerator.device)
        if self.precompute:
            self.stored = self._precompute(ordered_loader)

    def _teacher_targets(self, batch: dict) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _targets(self, batch: dict, example_index: torch.Tensor, like: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The teacher's targets for this batch, shaped like the student's ``like`` tensors."""
        if self.stored is not None:
            return self._lookup(example_index, like)
        return self._teacher_targets(batch)

    def _precompute(self, loader: DataLoader) -> tuple[torch.Tensor, ...]:
        chunks: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
        for batch in loader:
            batch = send_to_device(dict(batch), self.accelerator.device)
            index = batch.pop(EXAMPLE_INDEX)
            chunks.append((index.cpu(), tuple(t.float().cpu() for t in self._teacher_targets(batch))))
        count = sum(len(index) for index, _ in chunks)
        stored = []
        for position in range(len(chunks[0][1])):
            # Per-token targets come padded to each batch's length: keep the widest.
            width = tuple(max(sizes) for sizes in zip(*(targets[position].shape[1:] for _, targets in chunks)))
            table = torch.full((count, *width), self.fill_value)
            for index, targets in chunks:
                values = targets[position]
                table[(index, *(slice(0, n) for n in values.shape[1:]))] = values
            stored.append(table)
        return tuple(stored)

    def _lookup(self, example_index: torch.Tensor, like: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        rows = []
        for table, student in zip(self.stored, like):
            picked = table[example_index.cpu()]
            picked = picked[(slice(None), *(slice(0, n) for n in student.shape[1:]))]
            rows.append(picked.to(student.device))
        return tuple(rows)


class KnowledgeDistiller(TeacherDistiller):
    """``distill=kd``: logit distillation (module docstring)."""

    fill_value = PADDING_LOGIT

    def __init__(
        self,
        task: Task,
        student: torch.nn.Module,
        teacher: str | None = None,
        temperature: float = 2.0,
        loss_weight: float | None = None,
        replace_task_loss: bool = False,
        precompute: bool = False,
    ):
        if temperature <= 0:
            raise ConfigError(f"distill.temperature={temperature}: must be > 0")
        if precompute and task.token_distributions:
            raise ConfigError(
                "distill.precompute=true: this task's teacher logits are a distribution per token "
                "([examples, tokens, classes]); those of the whole training set do not fit in memory; "
                "set distill.precompute=false"
            )
        super().__init__(task, student, teacher, loss_weight, precompute, replace_task_loss)
        self.temperature = temperature

    def extra_loss(self, outputs, batch: dict, example_index: torch.Tensor) -> torch.Tensor:
        """Training-loop hook: the distillation term (added to the task loss, or replacing it)."""
        student = self.task.logits(outputs)
        teacher = self._targets(batch, example_index, student)
        mask = batch.get("attention_mask")
        terms = [self._divergence(s, t.to(s.dtype), mask) for s, t in zip(student, teacher)]
        return self.loss_weight * torch.stack(terms).mean()

    def _teacher_targets(self, batch: dict) -> tuple[torch.Tensor, ...]:
        with torch.no_grad(), self.accelerator.autocast():
            return tuple(t.detach() for t in self.task.logits(self.teacher(**batch)))

    def _divergence(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.task.token_distributions:
            return self._token_divergence(student, teacher, mask)
        if mask is not None and self.task.per_token_outputs:
            padding = mask == 0
            student = student.masked_fill(padding, PADDING_LOGIT)
            teacher = teacher.masked_fill(padding, PADDING_LOGIT)
        if student.shape[-1] == 1:
            return F.mse_loss(student, teacher)
        t = self.temperature
        return F.kl_div(F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1), reduction="batchmean") * t * t

    def _token_divergence(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[batch, seq, classes]: one KL per token, averaged over the real (unpadded) tokens."""
        t = self.temperature
        per_token = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                             reduction="none", log_target=True).sum(-1)
        if mask is None:
            return per_token.mean() * t * t
        real = mask[:, : per_token.shape[1]].to(per_token.dtype)
        return (per_token * real).sum() / real.sum().clamp(min=1) * t * t


def _load_teacher(task: Task, path: str) -> torch.nn.Module:
    # Relative to the working directory: the app never changes it (hydra.job.chdir: false).
    source = str(Path(path).expanduser().resolve())
    try:
        return task.auto_model_class().from_pretrained(source, **task.model_kwargs())
    except (OSError, ValueError) as error:
        raise ConfigError(f"distill.teacher={path}: cannot load a model there ({type(error).__name__})") from error
