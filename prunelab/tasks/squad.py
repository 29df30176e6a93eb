"""SQuAD v1.1 and v2.0 extractive question answering (``task=squad`` / ``task=squad_v2``)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

from prunelab.tasks.base import ExampleIds, Task, TaskData
from prunelab.tasks.squad_data import VERSIONS, load_squad
from prunelab.tasks.squad_metric import squad_v1_scores, squad_v2_scores
from prunelab.tasks.squad_processing import Windows, answer_positions, extract_answers, tokenize_windows
from prunelab.errors import ConfigError

PREDICTIONS_FILE = "predictions.json"
NULL_ODDS_FILE = "null_odds.json"


class SquadTask(Task):
    """Extractive QA on SQuAD.

    version: "1.1" (every question answerable) or "2.0" (adds unanswerable questions).
    max_seq_length: window length in tokens; when set it wins over the run-level ``max_length``
    (whose default suits GLUE), set it to null to use ``max_length``.
    doc_stride: tokens shared by consecutive windows of one context.
    n_best_size: start and end candidates kept per window. max_answer_length: longest answer, tokens.
    null_score_diff_threshold: v2 only; answer "" when the null score beats the best span by more.
    split_dev_by_article: if set to N, train and eval both come from the dev set: N whole articles
    (chosen from ``seed``) are held out for eval and the rest are trained on.
    max_train_samples: a random subset (from ``seed``) of that many training questions.
    max_eval_samples: the first that many eval questions.
    """

    family = "squad"
    main_metric = "f1"
    per_token_outputs = True  # start/end logits: one per token of each window
    output_files = (PREDICTIONS_FILE, NULL_ODDS_FILE)  # null odds: v2 only

    def __init__(
        self,
        version: str = "1.1",
        data_root: str | None = None,
        max_length: int = 384,
        max_seq_length: int | None = 384,
        doc_stride: int = 128,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        null_score_diff_threshold: float = 0.0,
        split_dev_by_article: int | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 0,
    ):
        self.version = _check_version(version)
        self.name = VERSIONS[self.version]
        self.data_root = data_root
        self.max_seq_length = int(max_seq_length if max_seq_length is not None else max_length)
        self.length_key = "task.max_seq_length" if max_seq_length is not None else "max_length"
        self.doc_stride = doc_stride
        self.n_best_size = n_best_size
        self.max_answer_length = max_answer_length
        self.null_score_diff_threshold = float(null_score_diff_threshold)
        self.split_dev_by_article = split_dev_by_article
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.seed = seed
        for field_name in ("max_seq_length", "n_best_size", "max_answer_length"):
            if getattr(self, field_name) < 1:
                raise ConfigError(f"task.{field_name}={getattr(self, field_name)} must be a positive integer")
        for field_name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, field_name)
            if value is not None and value < 1:
                raise ConfigError(f"{field_name}={value} must be a positive integer or null (all)")

    @property
    def with_null(self) -> bool:
        return self.version == "2.0"

    def input_length(self) -> tuple[str, int]:
        return self.length_key, self.max_seq_length

    def auto_model_class(self) -> type:
        return AutoModelForQuestionAnswering

    def load(self, tokenizer) -> TaskData:
        splits = load_squad(self.version, self.data_root, self.split_dev_by_article, self.seed)
        notes = list(splits.notes)
        train = splits.train
        if self.max_train_samples is not None and self.max_train_samples < len(train):
            picked = np.random.default_rng(self.seed).choice(len(train), self.max_train_samples, replace=False)
            train = train.select(np.sort(picked))
            notes.append(f"Trained on a random {len(train)} of {len(splits.train)} training questions (seed={self.seed}).")
        examples = splits.eval
        if self.max_eval_samples is not None and self.max_eval_samples < len(examples):
            examples = examples.select(range(self.max_eval_samples))
            notes.append(f"Evaluated on the first {len(examples)} of {len(splits.eval)} eval questions.")

        eval_windows = self._windows(tokenizer, examples)
        dev = f"SQuAD v{self.version} dev"
        carved = None
        if self.split_dev_by_article is not None:
            how = f"task.split_dev_by_article={self.split_dev_by_article}, seed={self.seed}"
            carved = ExampleIds(dev, tuple(train["id"]), how)
        return TaskData(
            train=_labelled_features(self._windows(tokenizer, train), train),
            # Eval features carry labels too, so the loop can report an eval loss; metrics come
            # from the logits alone.
            eval=_labelled_features(eval_windows, examples),
            collator=DataCollatorWithPadding(tokenizer),
            extra={
                "windows": eval_windows,
                "ids": list(examples["id"]),
                "contexts": list(examples["context"]),
                "gold_answers": [a["text"] for a in examples["answers"]],
            },
            notes=notes,
            eval_examples=ExampleIds(dev, tuple(examples["id"])),
            carved_train_examples=carved,
        )

    def _windows(self, tokenizer, examples: datasets.Dataset) -> Windows:
        return tokenize_windows(
            tokenizer, examples["question"], examples["context"], self.max_seq_length, self.doc_stride
        )

    def logits(self, outputs) -> tuple[torch.Tensor, ...]:
        return outputs.start_logits, outputs.end_logits

    def predict(self, logits: tuple[np.ndarray, ...], data: TaskData):
        start_logits, end_logits = (np.asarray(x) for x in logits)
        return extract_answers(
            start_logits,
            end_logits,
            data.extra["windows"],
            data.extra["contexts"],
            self.n_best_size,
            self.max_answer_length,
        )

    def compute_metrics(self, logits: tuple[np.ndarray, ...], data: TaskData) -> dict[str, float]:
        predictions = self.predict(logits, data)
        ids = data.extra["ids"]
        references = dict(zip(ids, data.extra["gold_answers"]))
        if not self.with_null:
            return squad_v1_scores(dict(zip(ids, predictions.text)), references)
        # Scoring the best spans with their null-score differences as the official "na probs"
        # gives the scores at our threshold plus the best threshold (best_f1_thresh) to use.
        return squad_v2_scores(
            dict(zip(ids, predictions.text)),
            references,
            no_answer_probs=dict(zip(ids, predictions.null_score_diff.tolist())),
            no_answer_threshold=self.null_score_diff_threshold,
        )

    def write_predictions(self, logits: tuple[np.ndarray, ...], data: TaskData, out_dir: Path) -> None:
        """``predictions.json`` (question id -> answer text) for the official evaluate script;
        v2 also writes ``null_odds.json`` (id -> null score difference, its ``--na-prob-file``)."""
        predictions = self.predict(logits, data)
        ids = data.extra["ids"]
        answers = predictions.answers(self.with_null, self.null_score_diff_threshold)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / PREDICTIONS_FILE).write_text(json.dumps(dict(zip(ids, answers)), indent=1, ensure_ascii=False))
        if self.with_null:
            null_odds = dict(zip(ids, predictions.null_score_diff.tolist()))
            (out_dir / NULL_ODDS_FILE).write_text(json.dumps(null_odds, indent=1))


def _check_version(version) -> str:
    # YAML may read 2.0 as a float; accept it and compare as the official version string.
    text = str(version)
    if text not in VERSIONS:
        raise ConfigError(f"task.version={version!r} is not supported; allowed values: {sorted(VERSIONS)}")
    return text


def _labelled_features(windows: Windows, examples: datasets.Dataset) -> datasets.Dataset:
    """Model inputs plus ``start_positions`` / ``end_positions`` of the first gold answer."""
    starts, ends = _first_answer_spans(examples["answers"])
    start_positions, end_positions = answer_positions(windows, starts, ends)
    return datasets.Dataset.from_dict(
        {**windows.inputs, "start_positions": start_positions, "end_positions": end_positions}
    )


def _first_answer_spans(answers: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Character span (end exclusive) of each example's first gold answer; -1 when unanswerable."""
    starts = np.full(len(answers), -1, dtype=np.int64)
    ends = np.full(len(answers), -1, dtype=np.int64)
    for i, answer in enumerate(answers):
        if answer["answer_start"]:
            starts[i] = answer["answer_start"][0]
            ends[i] = starts[i] + len(answer["text"][0])
    return starts, ends
