"""A model trained on examples carved out of an eval set carries their ids, and a run that would
score it (or a teacher) on any of them is refused: SQuAD's split_dev_by_article with another seed."""
from __future__ import annotations

import json

import pytest

from prunelab.app import trained_examples
from prunelab.app.run import run
from prunelab.errors import ConfigError
from prunelab.tasks.base import ExampleIds

SQUAD = ["task=squad", "task.split_dev_by_article=2", "task.max_seq_length=64", "task.doc_stride=16",
         "per_device_train_batch_size=2", "do_prune=false", "num_train_epochs=1"]
DEV = "SQuAD v1.1 dev"
ALL_IDS = [f"{a}-0" for a in range(6)]  # tests/conftest.py write_tiny_squad: one question per article


def _record(directory, *records: ExampleIds) -> None:
    (directory / trained_examples.FILE).write_text(
        json.dumps([{"source": r.source, "how": r.how, "ids": list(r.ids)} for r in records]))


def test_an_overlap_is_refused_in_one_line_naming_the_key_the_count_and_the_settings(tmp_path):
    _record(tmp_path, ExampleIds(DEV, ("0-0", "1-0", "2-0"), "task.split_dev_by_article=2, seed=7"))
    with pytest.raises(ConfigError) as caught:
        trained_examples.check({"distill.teacher": str(tmp_path)}, ExampleIds(DEV, ("2-0", "3-0")))
    assert str(caught.value) == (
        f"distill.teacher={tmp_path}: trained on 1 of this run's 2 eval examples ({DEV}, carved with "
        f"task.split_dev_by_article=2, seed=7); evaluate on examples it never saw: use the same settings "
        f"as the run that made it")


def test_disjoint_ids_another_source_or_no_record_pass(tmp_path):
    _record(tmp_path, ExampleIds(DEV, ("0-0", "1-0")), ExampleIds("SQuAD v2.0 dev", ("3-0",)))
    trained_examples.check({"model.name_or_path": str(tmp_path)}, ExampleIds(DEV, ("3-0", "4-0")))
    trained_examples.check({"model.name_or_path": "bert-base-uncased"}, ExampleIds(DEV, ("0-0",)))
    trained_examples.check({"model.name_or_path": str(tmp_path)}, None)


def test_a_malformed_record_names_its_file(tmp_path):
    (tmp_path / trained_examples.FILE).write_text('[{"ids": []}]')
    with pytest.raises(ConfigError, match=rf"^{tmp_path / trained_examples.FILE}: not a trained-examples record \(KeyError"):
        trained_examples.check({"model.name_or_path": str(tmp_path)}, ExampleIds(DEV, ("0-0",)))


def test_a_model_carries_its_start_points_records_and_its_own_once(tmp_path):
    start = ExampleIds(DEV, ("0-0", "1-0"), "seed=1")
    _record(tmp_path, start)
    own = ExampleIds(DEV, ("2-0",), "seed=2")
    carried = json.loads(trained_examples.carried({"model.name_or_path": str(tmp_path)}, own))
    assert [(r["how"], r["ids"]) for r in carried] == [("seed=1", ["0-0", "1-0"]), ("seed=2", ["2-0"])]
    assert len(json.loads(trained_examples.carried({"m": str(tmp_path)}, start))) == 1
    assert trained_examples.carried({"model.name_or_path": "tiny-bert"}, None) is None


@pytest.fixture(scope="module")
def start_point(make_config, tmp_path_factory):
    """A tiny SQuAD model trained on the dev articles that seed 42 does not hold out."""
    out = tmp_path_factory.mktemp("start")
    run(make_config(*SQUAD, "seed=42"), out)
    return out


def test_a_carved_squad_run_saves_the_ids_it_trained_on(start_point):
    summary = json.loads((start_point / "summary.json").read_text())
    [record] = trained_examples.read(start_point / "model")
    held_out = set(ALL_IDS) - set(record.ids)
    assert record.source == DEV and record.how == "task.split_dev_by_article=2, seed=42"
    assert len(record.ids) == 4 and len(held_out) == 2
    # The held-out articles are the ones this run scored (its predictions file names them).
    assert set(json.loads((start_point / "predictions.json").read_text())) == held_out
    assert summary["status"] == "completed"


def test_a_run_scoring_its_start_points_training_examples_is_refused(make_config, start_point, tmp_path):
    model = ["model=bert-mini", f"model.name_or_path={start_point / 'model'}"]
    with pytest.raises(ConfigError, match=rf"^model\.name_or_path={start_point / 'model'}: trained on [12] of this run's 2 eval"):
        run(make_config(*SQUAD, *model, "seed=1"), tmp_path / "other_seed")
    assert json.loads((tmp_path / "other_seed" / "summary.json").read_text())["status"] == "failed"
    # The same seed holds out the same articles: allowed, and the new model carries the record once.
    run(make_config(*SQUAD, *model, "seed=42"), tmp_path / "same_seed")
    assert trained_examples.read(tmp_path / "same_seed" / "model") == trained_examples.read(start_point / "model")


def test_a_teacher_that_trained_on_the_eval_examples_is_refused(make_config, start_point, tmp_path):
    with pytest.raises(ConfigError, match=rf"^distill\.teacher={start_point / 'model'}: trained on"):
        run(make_config(*SQUAD, "seed=1", "distill=kd", f"distill.teacher={start_point / 'model'}"), tmp_path)
