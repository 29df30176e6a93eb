"""Named-entity recognition as token classification (``task=ner``): CoNLL-2003 column files, or the
hub's CoNLL-2003, scored with seqeval's entity-level F1 (``ner_metric``)."""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from prunelab.errors import ConfigError
from prunelab.tasks.base import Task, TaskData, first_examples
from prunelab.tasks.ner_data import first_subtoken_labels, read_conll
from prunelab.tasks.ner_metric import TagScheme, ner_scores

PREDICTIONS_FILE = "predictions.txt"


class NerTask(Task):
    """Token classification of words into IOB entity tags.

    label_names: the tags in label-id order (``O``, ``B-<type>``, ``I-<type>``).
    train_file / validation_file: CoNLL column files, relative to ``data_root`` when it is set, else
    to the working directory; both null (and ``data_root`` null): ``hub_dataset`` from the hub.
    tag_column: the column holding the tag (0-based, negative from the end; the word is column 0).
    Only the first sub-token of each word is labelled and scored (as transformers' run_ner does);
    words cut off by ``max_length`` are not scored, and a note says how many.
    """

    family = "token_classification"
    main_metric = "f1"
    per_token_outputs = True  # one row of class logits per token
    token_distributions = True  # ... on the last axis: [batch, seq, labels]
    output_files = (PREDICTIONS_FILE,)

    def __init__(
        self,
        label_names: list[str],
        name: str = "ner",
        train_file: str | None = None,
        validation_file: str | None = None,
        tag_column: int = -1,
        hub_dataset: str = "eriktks/conll2003",
        data_root: str | None = None,
        max_length: int = 128,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 42,
    ):
        self.scheme = TagScheme.from_names(list(label_names))
        if tag_column == 0:
            raise ConfigError("task.tag_column=0: column 0 holds the word; the tag is a later column (-1: the last)")
        if (train_file is None) != (validation_file is None):
            raise ConfigError(
                f"task.train_file={train_file}, task.validation_file={validation_file}: give both CoNLL files, "
                "or neither (the hub's data)"
            )
        self.name = name
        self.label_names = list(label_names)
        self.files = {"task.train_file": train_file, "task.validation_file": validation_file}
        self.tag_column = tag_column
        self.hub_dataset = hub_dataset
        self.data_root = data_root
        self.max_length = max_length
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.seed = seed

    def input_length(self) -> tuple[str, int]:
        return "max_length", self.max_length

    def auto_model_class(self) -> type:
        return AutoModelForTokenClassification

    def model_kwargs(self) -> dict:
        return {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: index for index, name in enumerate(self.label_names)},
        }

    def load(self, tokenizer) -> TaskData:
        if not tokenizer.is_fast:
            raise ConfigError("model: token classification needs a fast tokenizer (it maps tokens to words)")
        if any(self.files.values()):
            train, evaluation, notes = self._load_files()
        elif self.data_root:  # a data_root means local data: never fall back to the hub silently
            raise ConfigError(
                f"data_root={self.data_root}: give the CoNLL files under it as task.train_file and "
                "task.validation_file, or set data_root=null for the HuggingFace hub"
            )
        else:
            train, evaluation, notes = self._load_hub()
        train, note = first_examples(train, self.max_train_samples, "max_train_samples", "training")
        notes += note
        evaluation, note = first_examples(evaluation, self.max_eval_samples, "max_eval_samples", "evaluation")
        notes += note
        tokens, tags = list(evaluation["tokens"]), list(evaluation["ner_tags"])
        eval_set, scored = self._encode(tokens, tags, tokenizer)
        words = sum(map(len, tokens))
        if len(scored) < words:
            notes.append(f"{words - len(scored)} of {words} evaluation words are not scored: cut off at "
                         f"max_length={self.max_length} tokens (or given no token by the tokenizer)")
        return TaskData(
            train=self._encode(list(train["tokens"]), list(train["ner_tags"]), tokenizer)[0],
            eval=eval_set,
            collator=DataCollatorForTokenClassification(tokenizer),
            extra={"tokens": tokens, "tags": tags, "scored": scored},
            notes=notes,
        )

    def logits(self, outputs) -> tuple[torch.Tensor, ...]:
        return (outputs.logits,)

    def eval_outputs(self, outputs, batch: dict) -> tuple[torch.Tensor, ...]:
        # The predicted tag and the gold label of each token: [batch, seq] instead of
        # [batch, seq, labels]; padding across batches (-100) then reads as an ignored label.
        return outputs.logits.argmax(-1).float(), batch["labels"].float()

    def compute_metrics(self, logits: tuple[np.ndarray, ...], data: TaskData) -> dict[str, float]:
        predicted, gold, sentence = _scored(logits)
        return ner_scores(gold, predicted, sentence, self.scheme)

    def write_predictions(self, logits: tuple[np.ndarray, ...], data: TaskData, out_dir: Path) -> None:
        """``predictions.txt``: each scored word with its gold and predicted tag (``word gold
        predicted``), a blank line after each sentence: the input of the conlleval script."""
        predicted, _, sentence = _scored(logits)
        tokens, tags, scored = data.extra["tokens"], data.extra["tags"], data.extra["scored"]
        names = self.label_names
        lines: list[str] = []
        for index, (row, word, tag) in enumerate(zip(sentence, scored, predicted)):
            if index and row != sentence[index - 1]:
                lines.append("")
            lines.append(f"{tokens[row][word]} {names[tags[row][word]]} {names[tag]}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / PREDICTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _load_files(self) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
        splits = []
        for key, name in self.files.items():
            path = Path(self.data_root or ".") / name
            if not path.is_file():
                where = f"data_root={self.data_root}" if self.data_root else "the working directory"
                raise ConfigError(f"{key}={name}: {path.resolve()} not found (relative paths start at {where})")
            sentences = read_conll(path, self.label_names, self.tag_column)
            splits.append(datasets.Dataset.from_dict({"tokens": sentences.tokens, "ner_tags": sentences.tags}))
        notes = [f"{self.name}: CoNLL files {', '.join(f'{key}={name}' for key, name in self.files.items())}"]
        return splits[0], splits[1], notes

    def _load_hub(self) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
        try:
            raw = datasets.load_dataset(self.hub_dataset)
        except Exception as error:  # the hub raises many types (connection, offline mode, not found)
            raise ConfigError(
                f"task.train_file=null: cannot load '{self.hub_dataset}' from the HuggingFace hub "
                f"({type(error).__name__}); give CoNLL files as task.train_file and task.validation_file"
            ) from error
        hub_names = raw["train"].features["ner_tags"].feature.names
        if sorted(hub_names) != sorted(self.label_names):
            raise ConfigError(f"task.label_names={self.label_names}: '{self.hub_dataset}' tags words with {hub_names}")
        order = np.array([self.label_names.index(name) for name in hub_names])  # hub tag id -> this task's

        def split(name: str) -> datasets.Dataset:
            tags = [order[np.asarray(ids, dtype=np.int64)].tolist() for ids in raw[name]["ner_tags"]]
            return datasets.Dataset.from_dict({"tokens": list(raw[name]["tokens"]), "ner_tags": tags})

        return split("train"), split("validation"), [f"{self.name}: '{self.hub_dataset}' from the HuggingFace hub"]

    def _encode(self, tokens: list[list[str]], tags: list[list[int]], tokenizer) -> tuple[datasets.Dataset, np.ndarray]:
        """Model inputs with first-sub-token ``labels``, and the scored words: for each labelled
        token in order, the index of its word within its sentence."""
        encoded = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=self.max_length)
        labelled = [first_subtoken_labels(encoded.word_ids(i), word_tags) for i, word_tags in enumerate(tags)]
        features = datasets.Dataset.from_dict({**encoded, "labels": [labels for labels, _ in labelled]})
        return features, np.concatenate([words for _, words in labelled])


def _scored(logits: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The predicted and gold tag ids of the labelled tokens (in dataset order), and their sentences."""
    predicted, gold = logits
    labelled = gold >= 0
    sentence = np.nonzero(labelled)[0]
    return predicted[labelled].astype(np.int64), gold[labelled].astype(np.int64), sentence
