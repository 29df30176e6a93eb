"""Text for causal language modeling: documents read from the hub or from local ``.txt`` /
``.jsonl`` files, and packed into blocks of equal length."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import torch

from prunelab.errors import ConfigError

SUFFIXES = (".txt", ".jsonl")


def read_documents(path: str | Path, text_field: str, key: str) -> list[str]:
    """The documents of one local file: each non-empty line of a ``.txt`` file (blank lines
    separate nothing but are dropped), or ``text_field`` of each non-empty line of a ``.jsonl``
    file. A JSON line that does not parse, is not an object, or has no string ``text_field``
    raises ``ConfigError`` naming ``file:line``. ``key``: the config key that named the file."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{key}={path}: give a .txt file (one document per line) or a .jsonl file (one object per line)")
    if not path.is_file():
        raise ConfigError(f"{key}={path}: file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".txt":
        return [line for line in lines if line.strip()]
    return [_json_text(line, text_field, f"{path}:{number}") for number, line in enumerate(lines, start=1) if line.strip()]


def _json_text(line: str, text_field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise ConfigError(f"{where}: no string field '{text_field}' (task.text_field)")
    return text


def hub_documents(hub_dataset: str, hub_config: str | None, text_field: str) -> tuple[list[str], list[str]]:
    """(train, validation) documents of a hub dataset: the non-empty ``text_field`` of each row."""
    try:
        raw = datasets.load_dataset(hub_dataset, hub_config)
    except Exception as error:  # the hub raises many types (connection, offline mode, not found)
        raise ConfigError(
            f"task.hub_dataset={hub_dataset}: cannot load '{hub_dataset}/{hub_config}' from the HuggingFace hub "
            f"({type(error).__name__}); for local text give task.train_file and task.validation_file (.txt or .jsonl)"
        ) from error
    missing = [split for split in ("train", "validation") if split not in raw]
    if missing or text_field not in raw["train"].column_names:
        raise ConfigError(f"task.hub_dataset={hub_dataset}: needs train and validation splits with a "
                          f"'{text_field}' column (task.text_field); it has {dict(raw.column_names)}")
    return tuple([text for text in raw[split][text_field] if text.strip()] for split in ("train", "validation"))


def pack(documents: list[str], tokenizer, block_size: int) -> np.ndarray:
    """``[blocks, block_size]`` token ids: the documents tokenized without special tokens, joined
    with the tokenizer's EOS between them and cut into blocks; the tail shorter than a block is
    dropped. Every block is full, so no padding (and no attention mask but ones) is needed."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("model.tokenizer: task=clm joins documents with the tokenizer's EOS token and this tokenizer has none")
    pieces = tokenizer(documents, add_special_tokens=False)["input_ids"] if documents else []
    separated = [part for ids in pieces for part in (ids, [eos])][:-1]  # EOS between documents, none after the last
    ids = np.concatenate([np.asarray(part, dtype=np.int64) for part in separated]) if separated else np.zeros(0, np.int64)
    blocks = len(ids) // block_size
    return ids[: blocks * block_size].reshape(blocks, block_size)


class PackedBlocks(torch.utils.data.Dataset):
    """Items of ``[blocks, block_size]`` token ids as model inputs: ``input_ids``, an all-ones
    ``attention_mask`` (every token is real, also an EOS that equals the pad token) and ``labels``
    = ``input_ids`` (the model shifts them to predict each next token)."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = torch.from_numpy(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        ids = self.blocks[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
