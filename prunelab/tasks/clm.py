"""Causal language modeling (``task=clm``): next-token prediction on packed blocks of text,
scored by perplexity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, default_data_collator

from prunelab.errors import ConfigError
from prunelab.tasks.base import PAD_LOGIT, Task, TaskData
from prunelab.tasks.clm_data import PackedBlocks, hub_documents, pack, read_documents


class CausalLMTask(Task):
    """A decoder trained and evaluated on next-token prediction.

    Text comes from the hub (``hub_dataset`` / ``hub_config``, its train and validation splits) or,
    when ``train_file`` and ``validation_file`` are given, from local ``.txt`` (one document per
    line) or ``.jsonl`` (``text_field`` of one object per line) files; relative paths are taken
    from ``data_root`` when it is set, else from the directory the command was started in. Documents are joined with the tokenizer's EOS
    between them and cut into blocks of ``block_size`` tokens (null: the run-level
    ``max_length``), the tail dropped. ``max_train_samples`` / ``max_eval_samples``: the first
    that many blocks. ``seed`` comes with the run-time keywords every task takes and is not read:
    blocks are taken in order.

    Metrics: ``loss``, the mean negative log-likelihood over every predicted token of the eval
    set (each block predicts its tokens after the first), and ``perplexity = exp(loss)`` (lower
    is better). Evaluation keeps one loss per token, never the ``[batch, tokens, vocab]`` logits.
    """

    family = "language_modeling"
    main_metric = "perplexity"
    greater_is_better = False
    per_token_outputs = True  # logits: one distribution over the vocabulary per token
    token_distributions = True

    def __init__(
        self,
        name: str = "clm",
        hub_dataset: str | None = None,
        hub_config: str | None = None,
        text_field: str = "text",
        train_file: str | None = None,
        validation_file: str | None = None,
        block_size: int | None = None,
        data_root: str | None = None,
        max_length: int = 128,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 0,
    ):
        if (train_file is None) != (validation_file is None):
            raise ConfigError(f"task.train_file={train_file}, task.validation_file={validation_file}: give both local files or neither (the hub)")
        if train_file is None and not hub_dataset:
            raise ConfigError("task.hub_dataset: must be given when task.train_file and task.validation_file are not")
        self.name = name
        self.hub_dataset = hub_dataset
        self.hub_config = hub_config
        self.text_field = text_field
        # As task=ner reads its files: relative to data_root when it is set, else to the working
        # directory (the app never changes it).
        root = Path(data_root or ".")
        self.files = None if train_file is None else {
            "task.train_file": (root / train_file).resolve(),
            "task.validation_file": (root / validation_file).resolve(),
        }
        self.block_size = int(block_size if block_size is not None else max_length)
        self.length_key = "task.block_size" if block_size is not None else "max_length"
        if self.block_size < 2:
            raise ConfigError(f"{self.length_key}={self.block_size}: a block must hold at least 2 tokens (one to predict from)")
        self.limits = {"max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples}
        for key, value in self.limits.items():
            if value is not None and value < 1:
                raise ConfigError(f"{key}={value}: must be a positive number of blocks or null (all)")

    def input_length(self) -> tuple[str, int]:
        return self.length_key, self.block_size

    def auto_model_class(self) -> type:
        return AutoModelForCausalLM

    def model_kwargs(self) -> dict:
        # Nothing here generates: cached keys/values would only hold memory in every forward.
        return {"use_cache": False}

    def load(self, tokenizer) -> TaskData:
        if self.files is not None:
            sources = [(f"{key}={path}", read_documents(path, self.text_field, key)) for key, path in self.files.items()]
            notes = [f"Text read from {', '.join(map(str, self.files.values()))}"]
        else:
            texts = hub_documents(self.hub_dataset, self.hub_config, self.text_field)
            sources = [(f"task.hub_dataset={self.hub_dataset} ({split} split)", split_texts)
                       for split, split_texts in zip(("train", "validation"), texts)]
            notes = [f"Text from the HuggingFace hub ({self.hub_dataset}/{self.hub_config})"]
        splits = []
        for (where, texts), (limit_key, limit) in zip(sources, self.limits.items()):
            blocks = pack(texts, tokenizer, self.block_size)
            if not len(blocks):
                raise ConfigError(f"{where}: its {len(texts)} documents hold fewer tokens than one block "
                                  f"({self.length_key}={self.block_size})")
            kept = blocks[:limit]  # limit None: all
            notes.append(f"{where}: {len(kept)} of {len(blocks)} blocks of {self.block_size} tokens from "
                         f"{len(texts)} documents (EOS between documents, the last partial block dropped)"
                         + (f"; {limit_key}={limit}" if len(kept) < len(blocks) else ""))
            splits.append(PackedBlocks(kept))
        return TaskData(train=splits[0], eval=splits[1], collator=default_data_collator, notes=notes)

    def logits(self, outputs) -> tuple[torch.Tensor, ...]:
        return (outputs.logits,)

    def eval_outputs(self, outputs, batch: dict) -> tuple[torch.Tensor, ...]:
        """``[batch, tokens - 1]`` float32: the negative log-likelihood of each next token, from
        the logits of the token before it; ``PAD_LOGIT`` where the label is ignored (-100)."""
        labels = batch["labels"][:, 1:]
        logits = outputs.logits[:, :-1]
        ignored = labels == -100
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels.masked_fill(ignored, 0), reduction="none")
        return (nll.masked_fill(ignored, PAD_LOGIT),)

    def compute_metrics(self, logits: tuple[np.ndarray, ...], data: TaskData) -> dict[str, float]:
        nll = np.asarray(logits[0])
        real = nll[nll != PAD_LOGIT].astype(np.float64)
        loss = float(real.mean()) if real.size else float("nan")
        return {"perplexity": float(np.exp(loss)), "loss": loss}
