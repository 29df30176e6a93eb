"""SQuAD windows, answer labels and answer extraction with the real MiniLM fast tokenizer."""
import numpy as np
import pytest
from transformers import AutoTokenizer

from prunelab.tasks.squad_processing import Windows, answer_positions, extract_answers, tokenize_windows

from conftest import require_minilm

QUESTION = "Where is the treasure?"
# 109 tokens: at 32 tokens per window with stride 8 it becomes 7 windows; the answer is in the last.
CONTEXT = " ".join(f"Word{i} is here." for i in range(20)) + " The treasure lies in Zurich today."
ANSWER = "Zurich"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(require_minilm().get_model_path())


@pytest.fixture(scope="module")
def left_tokenizer():
    return AutoTokenizer.from_pretrained(require_minilm().get_model_path(), padding_side="left")


def _labels(windows: Windows, contexts: list[str], answers: list[str]):
    starts = np.array([c.index(a) if a else -1 for c, a in zip(contexts, answers)])
    ends = np.array([s + len(a) if a else -1 for s, a in zip(starts, answers)])
    return answer_positions(windows, starts, ends)


def test_long_context_becomes_overlapping_windows(tokenizer):
    windows = tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=32, doc_stride=8)
    assert len(windows.lengths) == 7
    assert windows.lengths.max() == 32 and np.all(windows.example_index == 0)
    # Consecutive windows share exactly doc_stride context tokens.
    for i in range(len(windows.lengths) - 1):
        this = windows.offsets[i][windows.context_mask[i]]
        following = windows.offsets[i + 1][windows.context_mask[i + 1]]
        np.testing.assert_array_equal(this[-8:], following[:8])
    # Together the windows cover the context from its first to its last character.
    first_chars = [windows.offsets[i][windows.context_mask[i]][0, 0] for i in range(7)]
    last_chars = [windows.offsets[i][windows.context_mask[i]][-1, 1] for i in range(7)]
    assert min(first_chars) == 0 and max(last_chars) == len(CONTEXT)


def test_offsets_map_every_context_token_back_to_its_text(tokenizer):
    windows = tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=32, doc_stride=8)
    for i in range(len(windows.lengths)):
        ids = np.asarray(windows.inputs["input_ids"][i])[windows.context_mask[i, : windows.lengths[i]]]
        spans = windows.offsets[i][windows.context_mask[i]]
        pieces = [CONTEXT[s:e] for s, e in spans]
        # Re-tokenizing each character span gives back the token (WordPiece "##" aside).
        retokenized = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(p)[0]) for p in pieces]
        word_ids = [tokenizer.convert_tokens_to_ids(t.removeprefix("##")) for t in tokenizer.convert_ids_to_tokens(ids)]
        assert retokenized == word_ids


def test_answer_labels_point_at_the_answer_or_at_cls_when_outside(tokenizer):
    windows = tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=32, doc_stride=8)
    start, end = _labels(windows, [CONTEXT], [ANSWER])
    # Only the last window holds "Zurich"; the others are labelled (CLS, CLS) = (0, 0).
    assert start[:-1].tolist() == [0] * 6 and end[:-1].tolist() == [0] * 6
    assert start[-1] > 0 and start[-1] == end[-1]
    s, e = windows.offsets[-1, start[-1], 0], windows.offsets[-1, end[-1], 1]
    assert CONTEXT[s:e] == ANSWER


def test_answer_cut_by_a_window_edge_is_labelled_cls(tokenizer):
    windows = tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=32, doc_stride=8)
    # "Word4 is here. Word5" straddles the end of window 0 and starts inside it.
    answer = "Word4 is here. Word5"
    start, end = _labels(windows, [CONTEXT], [answer])
    assert (start[0], end[0]) == (0, 0)
    holding = np.flatnonzero(start > 0)
    assert holding.size >= 1
    for i in holding:
        assert CONTEXT[windows.offsets[i, start[i], 0] : windows.offsets[i, end[i], 1]] == answer


def test_answer_inside_a_word_piece_maps_to_the_whole_token(tokenizer):
    context = "They met in Zurichberg at noon."
    windows = tokenize_windows(tokenizer, ["Where?"], [context], max_seq_length=64, doc_stride=16)
    start, end = _labels(windows, [context], ["Zurich"])
    text = context[windows.offsets[0, start[0], 0] : windows.offsets[0, end[0], 1]]
    assert "Zurich" in text and text in "Zurichberg"


def test_unanswerable_example_is_labelled_cls_in_every_window(tokenizer):
    windows = tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=32, doc_stride=8)
    start, end = _labels(windows, [CONTEXT], [""])
    assert start.tolist() == windows.cls_index.tolist() == end.tolist()


def test_left_padding_tokenizer_puts_context_first_and_labels_still_map_back(left_tokenizer):
    contexts = [CONTEXT, "Short context about Zurich."]
    windows = tokenize_windows(left_tokenizer, [QUESTION, "What?"], contexts, max_seq_length=32, doc_stride=8)
    # Every window is padded to full length on the left, so CLS is not at 0 in a short one.
    assert np.all(windows.lengths == 32)
    assert windows.cls_index[-1] > 0
    assert windows.inputs["input_ids"][-1][windows.cls_index[-1]] == left_tokenizer.cls_token_id
    start, end = _labels(windows, contexts, [ANSWER, "Zurich"])
    for i in np.flatnonzero(start != windows.cls_index):
        ex = windows.example_index[i]
        assert contexts[ex][windows.offsets[i, start[i], 0] : windows.offsets[i, end[i], 1]] == "Zurich"
    assert (start != windows.cls_index).sum() == 2


def test_bad_window_settings_raise(tokenizer):
    with pytest.raises(ValueError, match="doc_stride"):
        tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=32, doc_stride=32)
    # QUESTION is 5 tokens + 3 special: a 24-token window holds 16 context tokens, so stride 16
    # would never advance (the tokenizer itself would panic).
    with pytest.raises(ValueError, match=r"longest question has 5 tokens.*holds only 16 context tokens"):
        tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=24, doc_stride=16)
    assert len(tokenize_windows(tokenizer, [QUESTION], [CONTEXT], max_seq_length=24, doc_stride=15).lengths) > 1


def _toy_windows() -> tuple[Windows, list[str]]:
    """Two examples, hand-made offsets: example 0 has two windows, example 1 one.

    Layout of every window: position 0 = CLS, 1 = question token, 2..5 = context tokens.
    """
    contexts = ["aa bb cc dd ee", "xx yy zz ww"]
    spans0 = [(0, 2), (3, 5), (6, 8), (9, 11)]  # aa bb cc dd
    spans0b = [(6, 8), (9, 11), (12, 14)]  # cc dd ee (shorter window)
    spans1 = [(0, 2), (3, 5), (6, 8), (9, 11)]  # xx yy zz ww
    offsets = np.zeros((3, 6, 2), dtype=np.int64)
    mask = np.zeros((3, 6), dtype=bool)
    for f, spans in enumerate([spans0, spans0b, spans1]):
        offsets[f, 2 : 2 + len(spans)] = spans
        mask[f, 2 : 2 + len(spans)] = True
    windows = Windows(
        inputs={},
        example_index=np.array([0, 0, 1]),
        offsets=offsets,
        context_mask=mask,
        cls_index=np.zeros(3, dtype=np.int64),
        lengths=np.array([6, 5, 6]),
    )
    return windows, contexts


def test_extraction_picks_the_best_valid_span_across_windows():
    windows, contexts = _toy_windows()
    start = np.full((3, 7), -20.0)  # one extra padded position, as batches padded by the app
    end = np.full((3, 7), -20.0)
    start[:, 6] = end[:, 6] = 100.0  # padding past each feature's length must be ignored
    start[1, 5] = end[1, 5] = 100.0  # feature 1 has length 5: position 5 is padding too
    start[:, 1] = end[:, 1] = 50.0  # the question token is never an answer
    start[0, 3], end[0, 4] = 2.0, 2.0  # "bb cc": score 4 in window 0
    start[0, 5], end[0, 2] = 9.0, 9.0  # "dd" .. "aa": end before start, invalid
    start[1, 3], end[1, 4] = 3.0, 3.0  # "dd ee": score 6 in window 1 -> wins for example 0
    start[2, 2], end[2, 5] = 4.0, 4.0  # "xx yy zz ww": 4 tokens, score 8
    end[2, 4] = 1.0  # a weaker end at "zz"
    predictions = extract_answers(start, end, windows, contexts, n_best_size=20, max_answer_length=30)
    assert predictions.text == ["dd ee", "xx yy zz ww"]
    # null = lowest CLS score over an example's windows (-40 for both); diff = null - best.
    np.testing.assert_allclose(predictions.null_score_diff, [-40.0 - 6.0, -40.0 - 8.0])

    shorter = extract_answers(start, end, windows, contexts, n_best_size=20, max_answer_length=3)
    # The 4-token span is now too long; best is start "xx" (4) + end "zz" (1) over 3 tokens.
    assert shorter.text[1] == "xx yy zz"
    # Two candidates per side: the question token and the best real one (padding is not a
    # candidate, else window 1's two starts would both be padding and "dd ee" would be lost).
    assert extract_answers(start, end, windows, contexts, n_best_size=2, max_answer_length=30).text == [
        "dd ee",
        "xx yy zz ww",
    ]
    # One candidate per side: the question token everywhere, so no valid span at all.
    top_one = extract_answers(start, end, windows, contexts, n_best_size=1, max_answer_length=30)
    assert top_one.text == ["", ""]
    assert np.all(top_one.null_score_diff == np.inf)


def test_null_answer_wins_above_the_threshold():
    windows, contexts = _toy_windows()
    start = np.zeros((3, 6))
    end = np.zeros((3, 6))
    start[:, 0] = end[:, 0] = 3.0  # CLS: null score 6 everywhere
    start[0, 2], end[0, 2] = 4.0, 4.0  # "aa": 8 beats null by 2 -> diff -2
    start[2, 2], end[2, 2] = 2.0, 2.0  # "xx": 4, null beats it by 2 -> diff +2
    predictions = extract_answers(start, end, windows, contexts, n_best_size=20, max_answer_length=30)
    np.testing.assert_allclose(predictions.null_score_diff, [-2.0, 2.0])
    assert predictions.answers(with_null=True, null_score_diff_threshold=0.0) == ["aa", ""]
    assert predictions.answers(with_null=True, null_score_diff_threshold=2.5) == ["aa", "xx"]
    assert predictions.answers(with_null=False, null_score_diff_threshold=0.0) == ["aa", "xx"]


def test_extraction_rejects_logits_that_do_not_match_the_features():
    windows, contexts = _toy_windows()
    with pytest.raises(ValueError, match="expected 3"):
        extract_answers(np.zeros((2, 6)), np.zeros((2, 6)), windows, contexts, 20, 30)
    with pytest.raises(ValueError, match="positions"):
        extract_answers(np.zeros((3, 4)), np.zeros((3, 4)), windows, contexts, 20, 30)
