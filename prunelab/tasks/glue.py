"""One implementation for every GLUE task; ``conf/task/<name>.yaml`` says which fields, labels and
metrics a task has and where its local tsv files live."""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from prunelab.errors import ConfigError
from prunelab.tasks.base import Task, TaskData, first_examples
from prunelab.tasks.glue_files import parse_labels, read_glue_table
from prunelab.tasks.glue_metrics import GLUE_METRICS, glue_metrics


class GlueTask(Task):
    """A GLUE sentence(-pair) classification or regression task.

    name: short name (``mrpc``); hub_dataset / hub_config: ``datasets.load_dataset(hub_dataset,
    hub_config)``; eval_split: the hub split used for evaluation; text_fields: one or two input
    fields (hub names); num_labels: classes (1 = regression, STS-B); label_names: for tsv files whose
    labels are words, the words in label-id order; metrics / main_metric: keys of ``GLUE_METRICS``;
    local: ``{dir, train_file, eval_file, header, columns}`` under ``<data_root>/glue`` where
    ``columns`` maps each hub field (and ``label``) to a tsv header name or column index.
    """

    family = "glue"
    per_token_outputs = False  # one row of logits per sentence (pair)

    def __init__(
        self,
        name: str,
        text_fields: list[str],
        num_labels: int,
        metrics: list[str],
        main_metric: str,
        local: dict,
        hub_config: str,
        hub_dataset: str = "nyu-mll/glue",
        eval_split: str = "validation",
        label_names: list[str] | None = None,
        data_root: str | None = None,
        max_length: int = 128,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 42,
    ):
        unknown = [m for m in metrics if m not in GLUE_METRICS]
        if unknown:
            raise ConfigError(f"task.metrics={unknown}: allowed {sorted(GLUE_METRICS)}")
        if main_metric not in metrics:
            raise ConfigError(f"task.main_metric={main_metric!r}: must be one of task.metrics {list(metrics)}")
        if len(text_fields) not in (1, 2):
            raise ConfigError(f"task.text_fields={list(text_fields)}: give one or two fields")
        self.name = name
        self.main_metric = main_metric
        self.text_fields = list(text_fields)
        self.num_labels = num_labels
        self.metrics = list(metrics)
        self.local = dict(local)
        self.hub_dataset = hub_dataset
        self.hub_config = hub_config
        self.eval_split = eval_split
        self.label_names = list(label_names) if label_names else None
        self.data_root = data_root
        self.max_length = max_length
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.seed = seed

    def input_length(self) -> tuple[str, int]:
        return "max_length", self.max_length

    def auto_model_class(self) -> type:
        return AutoModelForSequenceClassification

    def model_kwargs(self) -> dict:
        return {"num_labels": self.num_labels}

    def load(self, tokenizer) -> TaskData:
        if self.data_root:
            train, evaluation, notes = self._load_local()
        else:
            train, evaluation, notes = self._load_hub()
        train, note = first_examples(train, self.max_train_samples, "max_train_samples", "training")
        notes += note
        evaluation, note = first_examples(evaluation, self.max_eval_samples, "max_eval_samples", "evaluation")
        notes += note
        eval_labels = np.asarray(evaluation["label"])
        return TaskData(
            train=self._tokenize(train, tokenizer),
            eval=self._tokenize(evaluation, tokenizer),
            collator=DataCollatorWithPadding(tokenizer),
            extra={"labels": eval_labels},
            notes=notes,
        )

    def logits(self, outputs) -> tuple[torch.Tensor, ...]:
        return (outputs.logits,)

    def compute_metrics(self, logits: tuple[np.ndarray, ...], data: TaskData) -> dict[str, float]:
        scores = logits[0]
        predictions = scores[:, 0] if self.num_labels == 1 else scores.argmax(axis=-1)
        return glue_metrics(self.metrics, predictions, data.extra["labels"])

    def _load_local(self) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
        root = Path(self.data_root)
        if not root.is_dir():
            raise ConfigError(f"data_root={self.data_root}: not a directory (it must hold glue/{self.local['dir']}/)")
        folder = root / "glue" / self.local["dir"]
        splits, notes = [], [f"GLUE {self.name} read from local files in {folder}"]
        for key in ("train_file", "eval_file"):
            path = folder / self.local[key]
            if not path.is_file():
                raise ConfigError(
                    f"data_root={self.data_root}: {path} not found; expected the GLUE download layout "
                    f"<data_root>/glue/{self.local['dir']}/{{{self.local['train_file']},{self.local['eval_file']}}}"
                )
            table = read_glue_table(path, dict(self.local["columns"]), self.local.get("header", True))
            table.columns["label"] = parse_labels(table, self.num_labels, self.label_names)
            if table.skipped_lines:
                notes.append(f"{path.name}: {len(table.skipped_lines)} malformed rows skipped")
            splits.append(datasets.Dataset.from_dict(table.columns))
        return splits[0], splits[1], notes

    def _load_hub(self) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
        try:
            raw = datasets.load_dataset(self.hub_dataset, self.hub_config)
        except Exception as error:  # the hub raises many types (connection, offline mode, not found)
            raise ConfigError(
                f"data_root=null: cannot load '{self.hub_dataset}/{self.hub_config}' from the HuggingFace hub "
                f"({type(error).__name__}). For local files set data_root=/path/to/data (or env "
                f"PRUNELAB_DATA_ROOT) holding glue/{self.local['dir']}/{self.local['train_file']} and "
                f"{self.local['eval_file']}"
            ) from error
        keep = [*self.text_fields, "label"]
        return (
            raw["train"].select_columns(keep),
            raw[self.eval_split].select_columns(keep),
            [f"GLUE {self.name} from the HuggingFace hub ({self.hub_dataset}/{self.hub_config})"],
        )

    def _tokenize(self, split: datasets.Dataset, tokenizer) -> datasets.Dataset:
        def encode(batch):
            encoded = tokenizer(*(batch[f] for f in self.text_fields), truncation=True, max_length=self.max_length)
            encoded["labels"] = batch["label"]
            return encoded

        return split.map(encode, batched=True, remove_columns=split.column_names)

