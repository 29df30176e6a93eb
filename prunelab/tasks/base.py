"""The contract every fine-tuning task implements (GLUE, SQuAD, ...).

A task owns its data (hub or local files), its model head, how its logits are compared for
distillation, and how raw eval logits become metrics. The training loop knows nothing else.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from prunelab.errors import ConfigError

# Fills per-token eval outputs of shorter batches up to the longest (as transformers' QA examples
# do); -100 is also the label that token-level losses ignore.
PAD_LOGIT = -100.0


@dataclass(frozen=True)
class ExampleIds:
    """Examples of one source named by id, for the check that a run never scores a model on
    examples it (or its start point) trained on (``prunelab/app/trained_examples.py``)."""

    source: str  # the set the ids index, the same for hub and local copies, e.g. "SQuAD v1.1 dev"
    ids: tuple[str, ...]
    how: str = ""  # the settings that picked them, e.g. "task.split_dev_by_article=8, seed=43"


@dataclass
class TaskData:
    """Tokenized data ready for DataLoaders.

    train / eval: map-style datasets whose items are dicts of model inputs; train items carry the
    training targets (``labels`` or ``start_positions``/``end_positions``); eval items carry only
    what the model's forward accepts (plus ``labels`` where the task has them).
    collator: batches items with dynamic padding.
    extra: whatever ``compute_metrics`` needs besides logits (e.g. SQuAD examples and offsets).
    notes: plain-language facts a reader of summary.json must know (e.g. a held-out split).
    eval_examples: the eval examples by id, declared by tasks whose training can be carved out of
    their eval set: a start model or teacher that trained on any of them is refused.
    carved_train_examples: the training examples by id, when they were carved out of a set that
    also serves for eval (SQuAD's split_dev_by_article); saved beside the trained model.
    """

    train: Any
    eval: Any
    collator: Callable
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    eval_examples: ExampleIds | None = None
    carved_train_examples: ExampleIds | None = None


class Task(ABC):
    """Base class. Constructed by Hydra from ``conf/task/<name>.yaml`` plus run-time keywords:
    ``data_root`` (str | None), ``max_length`` (int), ``max_train_samples`` / ``max_eval_samples``
    (int | None), ``seed`` (int).

    The core reads only what a task declares here (docs/extending.md), never its name or family."""

    name: str
    family: str  # reported as summary.json's task_family (pairs dense/sparse rows in reports); never branched on
    main_metric: str  # metric key without the "eval/" prefix, e.g. "accuracy" or "f1"
    # Whether a larger main_metric is better (accuracy, F1) or worse (perplexity): what "best of
    # seeds" and "relative drop" mean in reports.
    greater_is_better: bool = True
    # Whether each tensor of ``logits`` holds one value per input token ([batch, seq], e.g. SQuAD's
    # start/end) rather than per example: distillation then leaves padding positions out, and
    # per-token features of a whole training set are too large to precompute.
    per_token_outputs: bool
    # Whether each per-token output holds a distribution over classes on its last axis
    # ([batch, seq, classes]: token labels, a vocabulary) rather than over the tokens themselves
    # (SQuAD's [batch, seq]): distillation then averages one KL per real token.
    token_distributions: bool = False
    # Files ``write_predictions`` may write into the run directory: a run that replaces an earlier
    # one in the same directory removes them with the rest of its outputs.
    output_files: tuple[str, ...] = ()

    @abstractmethod
    def input_length(self) -> tuple[str, int]:
        """The longest input in tokens, and the config key that sets it (``max_length``, ...)."""

    @abstractmethod
    def auto_model_class(self) -> type:
        """The transformers Auto class for this task's head."""

    def model_kwargs(self) -> dict:
        """Extra keywords for ``from_pretrained`` / ``from_config`` (e.g. ``num_labels``)."""
        return {}

    @abstractmethod
    def load(self, tokenizer) -> TaskData:
        """Read and tokenize the data (hub by default, local files when ``data_root`` is set)."""

    @abstractmethod
    def logits(self, outputs) -> tuple[torch.Tensor, ...]:
        """The logits distillation compares: ``(logits,)`` or ``(start_logits, end_logits)``."""

    def eval_outputs(self, outputs, batch: dict) -> tuple[torch.Tensor, ...]:
        """What evaluation keeps of one eval batch, reduced as far as the metrics allow before
        anything is gathered or stored (a language model keeps each token's loss, never
        [batch, seq, vocab] logits). Tensors are [batch] or [batch, seq, ...]; per-token ones are
        padded with ``PAD_LOGIT`` across batches. Default: ``logits(outputs)``."""
        return self.logits(outputs)

    @abstractmethod
    def compute_metrics(self, logits: tuple[np.ndarray, ...], data: TaskData) -> dict[str, float]:
        """Metrics from ``eval_outputs`` concatenated over the whole eval set, in dataset order.
        Keys carry no prefix (``accuracy``, ``f1``, ``exact_match`` ...)."""

    def write_predictions(self, logits: tuple[np.ndarray, ...], data: TaskData, out_dir: Path) -> None:
        """Write task-specific prediction files into ``out_dir``, each named in ``output_files``."""


def first_examples(split, limit: int | None, field: str, what: str) -> tuple[Any, list[str]]:
    """The first ``limit`` examples (as the reference scripts select them) and a note when cut."""
    if limit is None or limit >= len(split):
        return split, []
    if limit < 1:
        raise ConfigError(f"{field}={limit}: must be a positive number of examples or null")
    return split.select(range(limit)), [f"{field}={limit}: first {limit} of {len(split)} {what} examples"]
