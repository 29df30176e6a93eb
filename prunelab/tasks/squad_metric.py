"""SQuAD scoring, identical to the official v1.1 and v2.0 evaluation scripts.

Written in the project because ``evaluate.load("squad")`` fetches its module from the hub.
Scores are percentages (0-100) as the official scripts print them. The two versions differ in
small ways that are kept on purpose so numbers match the official scripts exactly:
- v1.1 averages over every question (a missing prediction scores 0); v2.0 averages over the
  questions that have a prediction.
- v2.0 drops gold answers that normalise to "" and treats a question without gold answers as
  having the single gold answer ""; its F1 is 1 when both sides are empty, 0 when only one is.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    """Token F1 of the v1.1 script: 0 when nothing overlaps, even if both sides are empty."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    return _overlap_f1(pred_tokens, gold_tokens)


def f1_v2(prediction: str, gold: str) -> float:
    """Token F1 of the v2.0 script: an empty side scores 1 only if the other is empty too."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _overlap_f1(pred_tokens, gold_tokens)


def _overlap_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_v1_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` (0-100), each the max over a question's gold answers.

    predictions: question id -> predicted text. references: question id -> gold answer texts.
    """
    if not references:
        raise ValueError("references is empty: nothing to score")
    exact_total = f1_total = 0.0
    for qid, golds in references.items():
        if qid not in predictions:
            continue
        pred = predictions[qid]
        exact_total += max(exact_match(pred, g) for g in golds)
        f1_total += max(f1_v1(pred, g) for g in golds)
    n = len(references)
    return {"exact_match": 100.0 * exact_total / n, "f1": 100.0 * f1_total / n}


def squad_v2_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    no_answer_probs: Mapping[str, float] | None = None,
    no_answer_threshold: float = 1.0,
) -> dict[str, float]:
    """Official v2.0 figures: overall, ``HasAns_*`` and ``NoAns_*`` exact match / F1 / totals.

    references: question id -> gold answer texts, empty for unanswerable questions.
    no_answer_probs: question id -> "no answer" score (higher = more likely unanswerable), as the
    official ``--na-prob-file``. When given, a question whose score exceeds
    ``no_answer_threshold`` counts as answered with "", and ``best_exact_match`` / ``best_f1``
    report the score at the best threshold together with that threshold (``*_thresh``).
    """
    if not references:
        raise ValueError("references is empty: nothing to score")
    qids = [q for q in references if q in predictions]
    if not qids:
        raise ValueError("no prediction matches a reference id")
    has_answer = np.array([_answerable(references[q]) for q in qids])
    exact_raw = np.empty(len(qids))
    f1_raw = np.empty(len(qids))
    for i, qid in enumerate(qids):
        golds = [g for g in references[qid] if normalize_answer(g)] or [""]
        exact_raw[i] = max(exact_match(predictions[qid], g) for g in golds)
        f1_raw[i] = max(f1_v2(predictions[qid], g) for g in golds)

    probs = np.array([no_answer_probs[q] for q in qids]) if no_answer_probs is not None else np.zeros(len(qids))
    predicted_null = probs > no_answer_threshold
    exact = np.where(predicted_null, ~has_answer, exact_raw)
    f1 = np.where(predicted_null, ~has_answer, f1_raw)

    scores = {"exact_match": 100.0 * float(exact.mean()), "f1": 100.0 * float(f1.mean()), "total": float(len(qids))}
    for prefix, mask in (("HasAns", has_answer), ("NoAns", ~has_answer)):
        if mask.any():
            scores[f"{prefix}_exact_match"] = 100.0 * float(exact[mask].mean())
            scores[f"{prefix}_f1"] = 100.0 * float(f1[mask].mean())
            scores[f"{prefix}_total"] = float(mask.sum())
    if no_answer_probs is not None:
        answered = np.array([bool(predictions[q]) for q in qids])
        num_no_answer = sum(not _answerable(golds) for golds in references.values())
        for name, raw in (("exact_match", exact_raw), ("f1", f1_raw)):
            best, thresh = _best_threshold(raw, probs, has_answer, answered, num_no_answer)
            scores[f"best_{name}"] = best
            scores[f"best_{name}_thresh"] = thresh
    return scores


def _answerable(golds: Sequence[str]) -> bool:
    # The official script marks a question answerable by its raw answer list, before normalising.
    return len(golds) > 0


def _best_threshold(
    raw: np.ndarray, probs: np.ndarray, has_answer: np.ndarray, answered: np.ndarray, num_no_answer: int
) -> tuple[float, float]:
    """The official ``find_best_thresh``: sweep the threshold up through the sorted scores.

    Starting from "every question predicted null" (all unanswerable ones right), letting a
    question keep its answer gains its raw score if answerable, and loses 1 if it is unanswerable
    but the model answered it. Like the official script, ``num_no_answer`` counts every reference.
    """
    order = np.argsort(probs, kind="stable")
    gain = np.where(has_answer, raw, np.where(answered, -1.0, 0.0))[order]
    running = num_no_answer + np.cumsum(gain)
    best_index = int(np.argmax(running))
    if running[best_index] > num_no_answer:
        return 100.0 * float(running[best_index]) / len(raw), float(probs[order][best_index])
    return 100.0 * num_no_answer / len(raw), 0.0
