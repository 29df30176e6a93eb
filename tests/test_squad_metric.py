"""Official SQuAD scoring on hand-worked examples (every expected number is worked out by hand)."""
import pytest

from prunelab.tasks.squad_metric import exact_match, f1_v1, f1_v2, normalize_answer, squad_v1_scores, squad_v2_scores


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The  Quick, brown fox!", "quick brown fox"),
        ("an apple a day", "apple day"),
        ("Theatre at the Anchor", "theatre at anchor"),  # articles only as whole words
        ("A.B.C.", "abc"),  # punctuation goes first, so "A." is no article
        ("  Denver\tBroncos \n", "denver broncos"),
        ("the", ""),
    ],
)
def test_normalize_answer_follows_the_official_rules(text, normalised):
    assert normalize_answer(text) == normalised


def test_exact_match_ignores_case_articles_and_punctuation():
    assert exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert exact_match("Eiffel", "Eiffel tower") == 0.0


def test_token_f1_counts_overlapping_tokens_with_multiplicity():
    # pred [big, red, dog], gold [red, dog, barked]: 2 common, P = R = 2/3
    assert f1_v1("the big red dog", "red dog barked") == pytest.approx(2 / 3)
    # pred [cat, cat], gold [cat]: 1 common, P = 1/2, R = 1 -> 2/3
    assert f1_v1("the cat cat", "cat") == pytest.approx(2 / 3)
    assert f1_v1("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    assert f1_v1("Broncos", "Panthers") == 0.0


def test_empty_answers_score_as_each_official_version_does():
    # v1.1: no overlap is 0 even when both sides are empty; v2.0: empty matches empty.
    assert f1_v1("", "") == 0.0
    assert f1_v2("", "") == 1.0
    assert f1_v2("the", "") == 1.0  # "the" normalises to ""
    assert f1_v2("London", "") == 0.0
    assert f1_v2("", "London") == 0.0


def test_v1_scores_take_the_best_gold_answer_and_count_missing_predictions_as_zero():
    references = {
        "q1": ["Denver Broncos", "Broncos", "the Broncos"],
        "q2": ["1990"],
        "q3": ["Santa Clara"],
    }
    predictions = {"q1": "Broncos", "q2": "in 1990"}  # q3 has no prediction
    scores = squad_v1_scores(predictions, references)
    # q1: EM 1, F1 1; q2: EM 0, F1 = 2PR/(P+R) with P=1/2, R=1 = 2/3; q3: 0.
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_v1_multi_answer_max_is_per_metric():
    # EM comes from "Broncos" (exact), F1 also 1 there; "Denver" alone gets F1 2/3 from "Denver Broncos".
    references = {"q": ["Denver Broncos", "Broncos"]}
    assert squad_v1_scores({"q": "Denver"}, references) == pytest.approx({"exact_match": 0.0, "f1": 100 * 2 / 3})


V2_REFERENCES = {
    "a": ["Paris"],  # answerable
    "b": ["in 1990", "1990"],  # answerable
    "c": [],  # unanswerable
    "d": [],  # unanswerable
}
V2_PREDICTIONS = {"a": "Paris", "b": "", "c": "", "d": "London"}


def test_v2_scores_split_into_has_answer_and_no_answer():
    scores = squad_v2_scores(V2_PREDICTIONS, V2_REFERENCES)
    # right: a (answer), c (abstained on an unanswerable question); wrong: b, d.
    assert scores == pytest.approx(
        {
            "exact_match": 50.0,
            "f1": 50.0,
            "total": 4.0,
            "HasAns_exact_match": 50.0,
            "HasAns_f1": 50.0,
            "HasAns_total": 2.0,
            "NoAns_exact_match": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2.0,
        }
    )


def test_v2_no_answer_threshold_and_best_threshold():
    probs = {"a": -3.0, "b": 2.0, "c": 1.0, "d": 0.5}
    scores = squad_v2_scores(V2_PREDICTIONS, V2_REFERENCES, no_answer_probs=probs, no_answer_threshold=0.0)
    # prob > 0 turns b, c, d into "": d becomes right, b and c stay as they were -> 3 of 4.
    assert scores["exact_match"] == pytest.approx(75.0)
    assert scores["NoAns_exact_match"] == pytest.approx(100.0)
    # Sweep in prob order from "all null" (2 right): a +1 -> 3 (best, at -3), d -1, c 0, b 0.
    assert scores["best_exact_match"] == pytest.approx(75.0)
    assert scores["best_exact_match_thresh"] == pytest.approx(-3.0)
    assert scores["best_f1"] == pytest.approx(75.0)


def test_v2_drops_gold_answers_that_normalise_to_nothing():
    references = {"e": ["the", "Denver"], "f": ["a"]}
    scores = squad_v2_scores({"e": "", "f": ""}, references)
    # e: gold "the" is dropped, "" vs "Denver" is wrong. f: its only gold normalises to "", so
    # the gold becomes "" and abstaining is right, yet f still counts as answerable (raw list).
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["HasAns_total"] == 2.0
    assert "NoAns_total" not in scores


def test_empty_references_raise():
    with pytest.raises(ValueError, match="references is empty"):
        squad_v1_scores({}, {})
