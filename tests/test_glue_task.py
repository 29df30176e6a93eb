"""GlueTask: local tsv files of every GLUE task, labels, truncation notes, metrics, hub errors."""
import numpy as np
import pytest

from prunelab.app.config import build
from prunelab.errors import ConfigError
from prunelab.models import character_tokenizer
from prunelab.tasks.glue_files import read_glue_tsv
from prunelab.tasks.glue_metrics import glue_metrics

GLUE_TASKS = ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"]


@pytest.fixture(scope="module")
def tokenizer():
    return character_tokenizer()


def _task(make_config, name, **overrides):
    cfg = make_config(f"task={name}")
    kwargs = dict(data_root=cfg.data_root, max_length=32, max_train_samples=None, max_eval_samples=None, seed=0)
    kwargs.update(overrides)
    return build(cfg.task, **kwargs)


@pytest.mark.parametrize("name", GLUE_TASKS)
def test_every_glue_task_reads_its_local_files(make_config, tiny_data_root, tokenizer, name):
    task = _task(make_config, name)
    data = task.load(tokenizer)
    assert len(data.train) == 96 and len(data.eval) == 48
    item = data.train[0]
    assert set(item) >= {"input_ids", "attention_mask", "labels"}
    assert len(item["input_ids"]) <= 32
    labels = data.extra["labels"]
    if name == "stsb":
        assert set(np.unique(labels)) == {0.5, 4.5}
    elif name == "mnli":
        assert set(np.unique(labels)) == {0, 1, 2}
    else:
        assert set(np.unique(labels)) == {0, 1}
    assert data.notes[0].startswith(f"GLUE {name} read from local files")


def test_pair_tasks_encode_both_sentences(make_config, tokenizer):
    data = _task(make_config, "mrpc").load(tokenizer)
    item = data.train[0]
    # [CLS] a [SEP] b [SEP]: the second segment is marked by token type 1.
    assert item["input_ids"].count(tokenizer.sep_token_id) == 2
    assert 1 in item["token_type_ids"]


def test_word_labels_follow_the_hub_order(make_config, tiny_data_root, tokenizer):
    data = _task(make_config, "rte").load(tokenizer)
    words = read_glue_tsv(tiny_data_root / "glue/RTE/dev.tsv", {"label": "label"}, header=True)[0]["label"]
    expected = [0 if word == "entailment" else 1 for word in words]
    assert data.extra["labels"].tolist() == expected


def test_mrpc_bom_and_stray_quotes_are_kept_verbatim(tiny_data_root):
    columns, skipped = read_glue_tsv(
        tiny_data_root / "glue/MRPC/train.tsv", {"sentence1": "#1 String", "label": "Quality"}, header=True
    )
    assert skipped == 0
    assert len(columns["label"]) == 96
    assert columns["sentence1"][0].startswith('the "') and columns["sentence1"][0].count('"') == 2


def test_short_rows_are_skipped_and_noted(make_config, tokenizer):
    data = _task(make_config, "qqp").load(tokenizer)
    assert "train.tsv: 1 malformed rows skipped" in data.notes
    assert len(data.train) == 96


def test_max_samples_keep_the_first_examples_and_say_so(make_config, tiny_data_root, tokenizer):
    data = _task(make_config, "sst2", max_train_samples=10, max_eval_samples=5).load(tokenizer)
    assert len(data.train) == 10 and len(data.eval) == 5
    assert "max_train_samples=10: first 10 of 96 training examples" in data.notes
    first = read_glue_tsv(tiny_data_root / "glue/SST-2/dev.tsv", {"label": "label"}, header=True)[0]["label"][:5]
    assert data.extra["labels"].tolist() == [int(v) for v in first]


def test_missing_task_folder_names_data_root_and_the_layout(make_config, tmp_path, tokenizer):
    (tmp_path / "glue").mkdir()
    with pytest.raises(ConfigError, match=r"data_root=.*glue/MRPC/train.tsv not found.*\{train.tsv,dev.tsv\}"):
        _task(make_config, "mrpc", data_root=str(tmp_path)).load(tokenizer)


def test_unreachable_hub_says_how_to_use_local_files(make_config, tokenizer, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr("prunelab.tasks.glue.datasets.load_dataset", offline)
    with pytest.raises(ConfigError, match=r"cannot load 'nyu-mll/glue/sst2'.*set data_root=.*PRUNELAB_DATA_ROOT"):
        _task(make_config, "sst2", data_root=None).load(tokenizer)


def test_unknown_metric_and_main_metric_are_rejected(make_config):
    with pytest.raises(ConfigError, match=r"task.metrics=\['bleu'\]: allowed"):
        _task(make_config, "sst2", metrics=["bleu"], main_metric="bleu")
    with pytest.raises(ConfigError, match=r"task.main_metric='f1'"):
        _task(make_config, "sst2", main_metric="f1")


def test_metrics_match_hand_computed_values():
    predictions = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1, 0])
    scores = glue_metrics(["accuracy", "f1", "matthews_correlation"], predictions, labels)
    # tp=2 fp=1 fn=1 tn=2: precision = recall = 2/3, so F1 = 2/3; MCC = (4-1)/sqrt(3*3*3*3) = 1/3.
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["matthews_correlation"] == pytest.approx(1 / 3)
    regression = glue_metrics(["pearson", "spearmanr"], np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert regression["spearmanr"] == pytest.approx(1.0)
    assert regression["pearson"] == pytest.approx(0.9827076298239908)


def test_compute_metrics_argmaxes_class_logits_and_reads_regression_scores(make_config, tokenizer):
    task = _task(make_config, "mrpc")
    data = task.load(tokenizer)
    labels = data.extra["labels"]
    perfect = np.stack([1.0 - labels, labels.astype(float)], axis=1)
    assert task.compute_metrics((perfect,), data) == {"accuracy": 1.0, "f1": 1.0}
    sts = _task(make_config, "stsb")
    sts_data = sts.load(tokenizer)
    result = sts.compute_metrics((sts_data.extra["labels"][:, None] * 2.0,), sts_data)
    assert result == {"pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}
