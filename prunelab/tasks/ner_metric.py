"""Entity-level precision / recall / F1 and token accuracy of IOB tag sequences, as seqeval computes
them by default (``seqeval.metrics.f1_score`` etc., mode=None: conlleval-compatible, micro average).

Entities are read from tag ids with the rules of seqeval 1.2.2's ``get_entities`` restricted to IOB
tags: a ``B-X`` always starts an entity; an ``I-X`` continues the entity before it when that entity
has type X and starts a new one otherwise (after ``O``, or after an entity of another type); any
other tag ends the entity before it. Sentences never share an entity (seqeval puts an ``O`` between
them). An entity counts as found only when its first word, last word and type all match a gold one.
Precision / recall / F1 are 0 where their denominator is 0 (seqeval's ``zero_division`` default).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunelab.errors import ConfigError


@dataclass(frozen=True)
class TagScheme:
    """What each tag id means. entity / begin: per id, whether it is ``B-``/``I-`` and whether
    ``B-``; kind: the id of its entity type (-1 for a non-entity tag such as ``O``)."""

    entity: np.ndarray
    begin: np.ndarray
    kind: np.ndarray
    types: tuple[str, ...]

    @classmethod
    def from_names(cls, names: list[str]) -> "TagScheme":
        """``O`` and ``B-<type>`` / ``I-<type>`` names in label-id order; anything else is refused."""
        bad = [name for name in names if name != "O" and not (name[:2] in ("B-", "I-") and len(name) > 2)]
        if bad or len(set(names)) != len(names) or not names:
            why = f"{bad[0]!r} is not O, B-<type> or I-<type>" if bad else "give each tag once"
            raise ConfigError(f"task.label_names={list(names)}: {why}")
        types = tuple(dict.fromkeys(name[2:] for name in names if name != "O"))
        return cls(
            entity=np.array([name != "O" for name in names]),
            begin=np.array([name.startswith("B-") for name in names]),
            kind=np.array([types.index(name[2:]) if name != "O" else -1 for name in names]),
            types=types,
        )


def entities(tags: np.ndarray, sentence: np.ndarray, scheme: TagScheme) -> np.ndarray:
    """The entities of a flat tag-id sequence as rows ``(first word, last word, type id)``.

    tags: [words] tag ids; sentence: [words] the sentence each word belongs to (non-decreasing).
    """
    tags = np.asarray(tags, dtype=np.int64)
    sentence = np.asarray(sentence)
    kind, entity = scheme.kind[tags], scheme.entity[tags]
    # An I- of the same type as the word before it (which is then in an entity), in the same sentence.
    continues = entity & ~scheme.begin[tags]
    continues[0:1] = False
    continues[1:] &= (kind[1:] == kind[:-1]) & (sentence[1:] == sentence[:-1])
    starts = np.flatnonzero(entity & ~continues)
    # An entity ends where the next word does not continue it.
    ends = np.flatnonzero(entity & ~np.append(continues[1:], False))
    return np.stack([starts, ends, kind[starts]], axis=1)


def ner_scores(gold: np.ndarray, predicted: np.ndarray, sentence: np.ndarray, scheme: TagScheme) -> dict[str, float]:
    """``precision``, ``recall``, ``f1`` (entities, micro over types) and ``accuracy`` (tags), in [0, 1].

    gold / predicted: [words] tag ids of the scored words; sentence: [words] their sentence ids.
    """
    gold_entities = entities(gold, sentence, scheme)
    predicted_entities = entities(predicted, sentence, scheme)
    # Entities of one sequence never share a first word: match on it, then compare end and type.
    _, in_gold, in_predicted = np.intersect1d(gold_entities[:, 0], predicted_entities[:, 0], return_indices=True)
    found = int((gold_entities[in_gold] == predicted_entities[in_predicted]).all(axis=1).sum())
    precision = found / len(predicted_entities) if len(predicted_entities) else 0.0
    recall = found / len(gold_entities) if len(gold_entities) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float(np.mean(np.asarray(gold) == np.asarray(predicted))) if len(gold) else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}
