"""SQuAD windows (pre-processing) and answer extraction (post-processing), as the HF QA examples.

A question whose context is longer than ``max_seq_length`` becomes several *features*: windows
of the context that overlap by ``doc_stride`` tokens, each prefixed with the question. The fast
tokenizer does the windowing and reports every token's character span (offsets). Training labels
are token positions of the answer in a window, or the CLS token when the answer is not wholly
inside it. Predictions go back from token scores to character spans of the original context.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prunelab.errors import ConfigError


@dataclass
class Windows:
    """Tokenized features and the per-token bookkeeping needed to map tokens back to text.

    inputs: model inputs, one list per feature (unpadded unless the tokenizer pads left).
    example_index: [F] the example each feature came from (non-decreasing).
    offsets: [F, L, 2] character span of every token in its example's context (0 elsewhere).
    context_mask: [F, L] True for tokens of the context.
    cls_index: [F] position of the CLS token, the label for "no answer in this window".
    lengths: [F] number of tokens in each feature.
    """

    inputs: dict[str, list]
    example_index: np.ndarray
    offsets: np.ndarray
    context_mask: np.ndarray
    cls_index: np.ndarray
    lengths: np.ndarray


def tokenize_windows(tokenizer, questions, contexts, max_seq_length: int, doc_stride: int) -> Windows:
    """Question + context windows of ``max_seq_length`` tokens overlapping by ``doc_stride``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD pre-processing needs a fast tokenizer (offset mappings); got a slow one")
    if not 0 <= doc_stride < max_seq_length:
        raise ConfigError(f"task.doc_stride={doc_stride} must be >= 0 and below max_seq_length={max_seq_length}")
    # Some SQuAD questions start with long runs of spaces that would only eat the window.
    questions = [q.lstrip() for q in questions]
    contexts = list(contexts)
    _check_room_for_context(tokenizer, questions, max_seq_length, doc_stride)
    pad_on_right = tokenizer.padding_side == "right"
    first, second = (questions, contexts) if pad_on_right else (contexts, questions)
    encoding = tokenizer(
        first,
        second,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        # Left padding shifts token positions per batch; padding every window to full length
        # keeps logits aligned with offsets. Right padding can stay dynamic.
        padding=False if pad_on_right else "max_length",
    )
    context_sequence = 1 if pad_on_right else 0
    n_features = len(encoding["input_ids"])
    lengths = np.array([len(ids) for ids in encoding["input_ids"]])
    width = int(lengths.max())
    offsets = np.zeros((n_features, width, 2), dtype=np.int64)
    context_mask = np.zeros((n_features, width), dtype=bool)
    for i, feature_offsets in enumerate(encoding["offset_mapping"]):
        offsets[i, : lengths[i]] = feature_offsets
        context_mask[i, : lengths[i]] = [s == context_sequence for s in encoding.sequence_ids(i)]
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    cls_index = np.array([ids.index(cls_id) if cls_id in ids else 0 for ids in encoding["input_ids"]])
    offsets[~context_mask] = 0
    # Only what the model's forward takes; offsets and the overflow map are bookkeeping.
    inputs = {k: encoding[k] for k in tokenizer.model_input_names if k in encoding}
    return Windows(
        inputs=inputs,
        example_index=np.asarray(encoding["overflow_to_sample_mapping"]),
        offsets=offsets,
        context_mask=context_mask,
        cls_index=cls_index,
        lengths=lengths,
    )


def _check_room_for_context(tokenizer, questions: list[str], max_seq_length: int, doc_stride: int) -> None:
    # The fast tokenizer panics (a pyo3 PanicException, not an Exception) when a window has no
    # room for more than doc_stride context tokens beside the question; say what to change.
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    room = max_seq_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride >= room:
        raise ValueError(
            f"task.doc_stride={doc_stride} leaves no new context per window: the longest question has "
            f"{longest} tokens, so a window of max_seq_length={max_seq_length} holds only {room} context "
            f"tokens. Lower task.doc_stride below {max(room, 0)} or raise task.max_seq_length."
        )


def answer_positions(windows: Windows, answer_starts: np.ndarray, answer_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token start/end labels per feature from per-EXAMPLE answer character spans.

    answer_starts / answer_ends: [n_examples] character span of the (first) gold answer, end
    exclusive; -1 for an unanswerable example. A feature whose window does not hold the whole
    answer is labelled (cls, cls).
    """
    start_char = answer_starts[windows.example_index][:, None]
    end_char = answer_ends[windows.example_index][:, None]
    ctx = windows.context_mask
    token_start, token_end = windows.offsets[..., 0], windows.offsets[..., 1]
    window_first_char = np.where(ctx, token_start, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
    window_last_char = np.where(ctx, token_end, -1).max(axis=1, keepdims=True)
    inside = ((start_char >= 0) & (window_first_char <= start_char) & (window_last_char >= end_char))[:, 0]
    # Start: the last context token starting at or before the answer; end: the first context
    # token ending at or after it (offsets grow along the context).
    starts_before = ctx & (token_start <= start_char)
    start_token = starts_before.shape[1] - 1 - np.argmax(starts_before[:, ::-1], axis=1)
    end_token = np.argmax(ctx & (token_end >= end_char), axis=1)
    return np.where(inside, start_token, windows.cls_index), np.where(inside, end_token, windows.cls_index)


@dataclass
class Predictions:
    """Per-example answers. ``text``: the best non-null span ("" if no valid span exists);
    ``null_score_diff``: null score minus best span score (higher = more likely unanswerable;
    +inf when no valid span exists)."""

    text: list[str]
    null_score_diff: np.ndarray

    def answers(self, with_null: bool, null_score_diff_threshold: float) -> list[str]:
        """The final answers: for SQuAD v2, "" where the null score beats the best span by more
        than the threshold."""
        if not with_null:
            return list(self.text)
        return ["" if diff > null_score_diff_threshold else t for t, diff in zip(self.text, self.null_score_diff)]


def extract_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    windows: Windows,
    contexts: list[str],
    n_best_size: int,
    max_answer_length: int,
) -> Predictions:
    """Best answer span per example over all its windows.

    As the HF examples: in each feature, the ``n_best_size`` highest start and end scores are
    paired; pairs outside the context, reversed, or longer than ``max_answer_length`` tokens are
    dropped; the highest start+end score over all features of an example wins. The null score of
    an example is the lowest CLS start+end score over its features.
    start_logits / end_logits: [F, >= L] in feature order; positions past a feature's length are
    ignored, whatever value padding gave them.
    """
    n_features, width = windows.context_mask.shape
    if start_logits.shape[0] != n_features or end_logits.shape[0] != n_features:
        raise ValueError(
            f"got logits for {start_logits.shape[0]}/{end_logits.shape[0]} features, expected {n_features}"
        )
    if min(start_logits.shape[1], end_logits.shape[1]) < width:
        raise ValueError(f"logits have {start_logits.shape[1]} positions, features need {width}")
    start_logits = start_logits[:, :width].astype(np.float64)
    end_logits = end_logits[:, :width].astype(np.float64)
    rows = np.arange(n_features)

    real_token = np.arange(width)[None, :] < windows.lengths[:, None]
    k = min(n_best_size, width)
    top_start = np.argsort(-np.where(real_token, start_logits, -np.inf), axis=1, kind="stable")[:, :k]
    top_end = np.argsort(-np.where(real_token, end_logits, -np.inf), axis=1, kind="stable")[:, :k]
    # [F, k, k] grid of (start candidate, end candidate) pairs.
    span_length = top_end[:, None, :] - top_start[:, :, None] + 1
    valid = (
        np.take_along_axis(windows.context_mask, top_start, axis=1)[:, :, None]
        & np.take_along_axis(windows.context_mask, top_end, axis=1)[:, None, :]
        & (span_length >= 1)
        & (span_length <= max_answer_length)
    )
    pair_score = (
        np.take_along_axis(start_logits, top_start, axis=1)[:, :, None]
        + np.take_along_axis(end_logits, top_end, axis=1)[:, None, :]
    )
    pair_score = np.where(valid, pair_score, -np.inf).reshape(n_features, k * k)
    best_pair = pair_score.argmax(axis=1)
    feature_score = pair_score[rows, best_pair]
    feature_start = top_start[rows, best_pair // k]
    feature_end = top_end[rows, best_pair % k]
    null_score = start_logits[rows, windows.cls_index] + end_logits[rows, windows.cls_index]

    example_index = windows.example_index
    if np.any(np.diff(example_index) < 0):
        raise ValueError("features must be grouped by example in order (example_index non-decreasing)")
    group_start = np.flatnonzero(np.r_[True, np.diff(example_index) != 0])
    # Within each example, pick the feature with the highest span score (ties: first window).
    order = np.lexsort((-feature_score, example_index))
    best_feature = order[group_start]
    example_null = np.minimum.reduceat(null_score, group_start)
    best_score = feature_score[best_feature]

    texts = []
    for ex, f in zip(example_index[group_start], best_feature):
        if np.isfinite(feature_score[f]):
            texts.append(contexts[ex][windows.offsets[f, feature_start[f], 0] : windows.offsets[f, feature_end[f], 1]])
        else:
            texts.append("")
    if len(texts) != len(contexts):
        raise ValueError(f"{len(contexts)} examples but features cover only {len(texts)}")
    diff = np.where(np.isfinite(best_score), example_null - best_score, np.inf)
    return Predictions(text=texts, null_score_diff=diff)
