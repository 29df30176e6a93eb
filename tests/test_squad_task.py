"""SquadTask through the Task API: local files, the article split, errors, and a tiny end-to-end run."""
import json

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

from prunelab.errors import ConfigError
from prunelab.tasks.squad import SquadTask

from conftest import require_minilm

# (title, context, [(question, answer or None for unanswerable)])
ARTICLES = [
    (
        "Capitals",
        "The capital of France is Paris. The capital of Peru is Lima, a city by the sea.",
        [("What is the capital of France?", "Paris"), ("What is the capital of Peru?", "Lima")],
    ),
    (
        "Rivers",
        "The Rhine flows into the North Sea. The Danube ends in the Black Sea after a long course.",
        [("Where does the Rhine flow?", "the North Sea"), ("Where does the Danube end?", "the Black Sea")],
    ),
    (
        "Colours",
        "Grass is green and the sky is blue. Snow is white, coal is black and blood is red. "
        "Gold is yellow, violets are purple and oranges are orange in every season of the year.",
        [("What colour is snow?", "white"), ("What colour are violets?", "purple"), ("Who painted grass?", None)],
    ),
]


def _squad_json(articles, version: str) -> dict:
    data = []
    for a, (title, context, qas) in enumerate(articles):
        questions = []
        for q, (question, answer) in enumerate(qas):
            answers = [] if answer is None else [{"text": answer, "answer_start": context.index(answer)}]
            entry = {"id": f"{a}-{q}", "question": question, "answers": answers}
            if version == "2.0":
                entry["is_impossible"] = answer is None
            questions.append(entry)
        data.append({"title": title, "paragraphs": [{"context": context, "qas": questions}]})
    return {"version": version, "data": data}


def _write(root, version: str, train: bool, articles=ARTICLES):
    folder = root / "squad"
    folder.mkdir(parents=True, exist_ok=True)
    if version == "1.1":  # v1.1 has no unanswerable questions
        articles = [(t, c, [qa for qa in qas if qa[1] is not None]) for t, c, qas in articles]
    content = json.dumps(_squad_json(articles, version))
    (folder / f"dev-v{version}.json").write_text(content)
    if train:
        (folder / f"train-v{version}.json").write_text(content)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(require_minilm().get_model_path())


def _task(root, **overrides) -> SquadTask:
    kwargs = dict(data_root=str(root), max_length=128, max_seq_length=48, doc_stride=16, seed=0)
    kwargs.update(overrides)
    return SquadTask(**kwargs)


def test_local_files_load_into_windows_with_labels(tmp_path, tokenizer):
    data = _task(_write(tmp_path, "1.1", train=True)).load(tokenizer)
    assert data.extra["ids"] == ["0-0", "0-1", "1-0", "1-1", "2-0", "2-1"]
    assert data.notes == []
    # The colours context (~40 tokens) does not fit beside its question in 48 tokens: 2 windows.
    windows = data.extra["windows"]
    assert len(data.eval) == len(windows.lengths) > 6
    assert np.bincount(windows.example_index).tolist()[4:] == [2, 2]
    item = data.train[0]
    context = ARTICLES[0][1]
    start, end = item["start_positions"], item["end_positions"]
    assert tokenizer.decode(item["input_ids"][start : end + 1]) == "paris"
    # Eval items carry model inputs and labels (for an eval loss); the text to score stays in extra.
    assert set(data.eval[0]) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    assert data.extra["contexts"][0] == context


def test_missing_train_file_asks_for_the_article_split(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match=r"task\.split_dev_by_article=N"):
        _task(_write(tmp_path, "1.1", train=False)).load(tokenizer)


def test_missing_dev_file_names_the_expected_path(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match=r"squad/dev-v1\.1\.json"):
        _task(tmp_path).load(tokenizer)


def test_article_split_keeps_articles_apart_and_says_so(tmp_path, tokenizer):
    root = _write(tmp_path, "2.0", train=False)
    data = _task(root, version="2.0", split_dev_by_article=1, seed=3).load(tokenizer)
    eval_articles = {qid.split("-")[0] for qid in data.extra["ids"]}
    assert len(eval_articles) == 1
    train_contexts = {tokenizer.decode(ids, skip_special_tokens=True) for ids in data.train["input_ids"]}
    held_out_context = data.extra["contexts"][0].lower()
    assert not any(held_out_context[:20] in c for c in train_contexts)
    assert len(data.notes) == 1 and "split_dev_by_article=1" in data.notes[0]
    assert "No SQuAD training file was used" in data.notes[0]
    # Same seed, same split; the split is chosen from the seed.
    again = _task(root, version="2.0", split_dev_by_article=1, seed=3).load(tokenizer)
    assert again.extra["ids"] == data.extra["ids"]
    splits = {tuple(_task(root, version="2.0", split_dev_by_article=1, seed=s).load(tokenizer).extra["ids"]) for s in range(6)}
    assert len(splits) > 1


def test_sample_limits_count_questions_and_are_noted(tmp_path, tokenizer):
    root = _write(tmp_path, "1.1", train=True)
    data = _task(root, max_train_samples=3, max_eval_samples=2).load(tokenizer)
    assert data.extra["ids"] == ["0-0", "0-1"]
    assert len(data.train) >= 3
    assert any("random 3 of 6 training questions" in n for n in data.notes)
    assert any("first 2 of 6 eval questions" in n for n in data.notes)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"version": "3"}, r"task\.version='3'.*allowed values: \['1\.1', '2\.0'\]"),
        ({"split_dev_by_article": 3}, r"split_dev_by_article=3: must be between 1 and 2"),
        ({"n_best_size": 0}, r"task\.n_best_size=0"),
        ({"doc_stride": 48}, r"task\.doc_stride=48"),
    ],
)
def test_bad_settings_raise_naming_the_field(tmp_path, tokenizer, overrides, message):
    root = _write(tmp_path, "1.1", train=True)
    with pytest.raises(ValueError, match=message):
        _task(root, **overrides).load(tokenizer)


def test_version_read_by_yaml_as_a_float_is_accepted(tmp_path):
    assert _task(tmp_path, version=2.0).name == "squad_v2"
    assert _task(tmp_path, version="1.1").name == "squad"


def test_max_seq_length_null_falls_back_to_the_run_max_length(tmp_path):
    assert _task(tmp_path, max_seq_length=None, max_length=200).max_seq_length == 200


def test_hub_failure_tells_to_set_data_root(monkeypatch, tokenizer):
    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"set data_root=.*squad/dev-v1\.1\.json"):
        SquadTask(data_root=None).load(tokenizer)


def _train_and_predict(task: SquadTask, data, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A few AdamW steps on a tiny random BERT, then eval logits padded and concatenated like the app."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
    )
    model = task.auto_model_class().from_config(config, **task.model_kwargs())
    assert isinstance(model, BertForQuestionAnswering)
    loader = torch.utils.data.DataLoader(data.train, batch_size=16, shuffle=True, collate_fn=data.collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    step = 0
    while step < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
    model.eval()
    starts, ends = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data.eval, batch_size=3, collate_fn=data.collator):
            start, end = task.logits(model(**batch))
            starts.append(start.numpy())
            ends.append(end.numpy())
    width = max(s.shape[1] for s in starts)
    pad = lambda parts: np.concatenate([np.pad(p, [(0, 0), (0, width - p.shape[1])], constant_values=-100.0) for p in parts])  # noqa: E731
    return pad(starts), pad(ends)


def test_tiny_model_learns_the_answers_end_to_end_v1(tmp_path, tokenizer):
    task = _task(_write(tmp_path, "1.1", train=True))
    data = task.load(tokenizer)
    logits = _train_and_predict(task, data, steps=200)
    metrics = task.compute_metrics(logits, data)
    # Trained and evaluated on the same 6 questions: it must have memorised most of them
    # (measured: EM 83.3, F1 91.7; an untrained model scores near 0).
    assert metrics["f1"] >= 80.0 and metrics["exact_match"] >= 66.0
    task.write_predictions(logits, data, tmp_path / "out")
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert list(predictions) == data.extra["ids"]
    assert predictions["0-0"] == "Paris"


def test_tiny_model_end_to_end_v2_answers_and_abstains(tmp_path, tokenizer):
    task = _task(_write(tmp_path, "2.0", train=True), version="2.0")
    data = task.load(tokenizer)
    logits = _train_and_predict(task, data, steps=200)
    metrics = task.compute_metrics(logits, data)
    assert metrics["HasAns_total"] == 6.0 and metrics["NoAns_total"] == 1.0
    # measured: EM = F1 = 100; the unanswerable question is refused by a null margin of ~13 logits
    assert metrics["f1"] >= 80.0 and metrics["NoAns_exact_match"] == 100.0
    assert {"best_f1", "best_f1_thresh", "NoAns_f1", "HasAns_exact_match"} <= set(metrics)
    task.write_predictions(logits, data, tmp_path / "out")
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    null_odds = json.loads((tmp_path / "out" / "null_odds.json").read_text())
    assert set(null_odds) == set(predictions) == set(data.extra["ids"])
    # Abstained exactly where the null score beat the best span by more than the threshold (0).
    assert all((predictions[q] == "") == (null_odds[q] > 0.0) for q in predictions)
