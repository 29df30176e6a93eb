"""CoNLL-2003 column files and first-sub-token labels.

A CoNLL file holds one word per line, its columns separated by whitespace: the word first, its tag
in ``tag_column`` (the last by default; CoNLL-2003 puts part-of-speech and chunk tags between), a
blank line after each sentence, and ``-DOCSTART-`` lines between documents. A bad file raises
``ConfigError`` with one line starting ``<path>:<line>:`` (1-based, as an editor counts).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunelab.errors import ConfigError

DOCUMENT_START = "-DOCSTART-"
IGNORED = -100  # the label token-classification losses skip (sub-tokens after a word's first, specials)


@dataclass
class Sentences:
    """Words and their tag ids, one list per sentence."""

    tokens: list[list[str]]
    tags: list[list[int]]


def read_conll(path: Path, label_names: list[str], tag_column: int = -1) -> Sentences:
    """The sentences of a CoNLL file, tags as indices into ``label_names``."""
    lookup = {name: index for index, name in enumerate(label_names)}
    sentences = Sentences([], [])
    words: list[str] = []
    tags: list[int] = []
    for number, line in enumerate(_text(path).splitlines(), 1):
        columns = line.split()
        if not columns or columns[0] == DOCUMENT_START:  # a blank line or a document marker ends a sentence
            if words:
                sentences.tokens.append(words)
                sentences.tags.append(tags)
                words, tags = [], []
            continue
        # The tag must be a column after the word (tag_column counts from the end when negative).
        if not 1 <= (tag_column if tag_column >= 0 else len(columns) + tag_column) < len(columns):
            raise ConfigError(
                f"{path}:{number}: {len(columns)} column{'s' if len(columns) != 1 else ''} ({line.strip()!r}); "
                f"expected the word first and its tag in column {tag_column} (task.tag_column, 0-based, -1: the last)"
            )
        tag = lookup.get(columns[tag_column])
        if tag is None:
            raise ConfigError(
                f"{path}:{number}: tag {columns[tag_column]!r} is not one of task.label_names ({', '.join(label_names)})"
            )
        words.append(columns[0])
        tags.append(tag)
    if words:  # the last sentence needs no blank line after it
        sentences.tokens.append(words)
        sentences.tags.append(tags)
    if not sentences.tokens:
        raise ConfigError(f"{path}: no sentences (expected one word per line with its tag, blank lines between sentences)")
    return sentences


def _text(path: Path) -> str:
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the file ({error.strerror or error})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({error.reason}); save the file as UTF-8") from None


def first_subtoken_labels(word_ids: list[int | None], tags: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per token, its word's tag on the word's first sub-token and ``IGNORED`` elsewhere (special
    tokens, later sub-tokens); and the words so labelled, in order (a word cut off by truncation,
    or one the tokenizer gave no token, has none).

    word_ids: per token the index of its word, None for special tokens (a fast tokenizer's
    ``word_ids``); tags: per word its tag id.
    """
    words = np.array([-1 if word is None else word for word in word_ids], dtype=np.int64)
    first = words >= 0
    first[1:] &= words[1:] != words[:-1]
    labels = np.full(len(words), IGNORED, dtype=np.int64)
    labels[first] = np.asarray(tags, dtype=np.int64)[words[first]]
    return labels, words[first]
