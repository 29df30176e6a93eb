"""run(cfg) end to end on the tiny model: one run per task family, outputs, failures, the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, BertConfig, RobertaConfig

import prunelab.app.stages
from prunelab.errors import ConfigError
from prunelab.app.run import run
from prunelab.models import PretrainedModel
from prunelab.tasks.glue import GlueTask
from prunelab.tasks.squad import SquadTask

SUMMARY_KEYS = {
    "status", "error", "task", "task_family", "model", "model_name_or_path", "do_prune", "pattern",
    "pruning_type", "target_sparsity", "seed", "main_metric", "greater_is_better", "metrics", "sparsity",
    "overrides", "notes", "wall_time_s", "versions", "output_dir", "quantization",
}
REPO = Path(__file__).resolve().parents[1]


def _read(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, lines


@pytest.fixture(scope="module")
def glue_run(make_config, tmp_path_factory):
    """SST-2 (tiny synthetic, 96 examples): 2 dense epochs, 3 pruning to 4x1 at 0.5, 1 cooldown."""
    out = tmp_path_factory.mktemp("glue_run")
    cfg = make_config(
        "task=sst2", "pattern=4x1", "target_sparsity=0.5", "max_train_samples=96", "max_eval_samples=48",
        "num_train_epochs=6", "learning_rate=1e-3", "lr_scheduler_type=constant", "sparsity_warm_epochs=2",
        "cooldown_epochs=1",
    )
    metrics = run(cfg, out)
    return out, metrics


def test_glue_run_learns_and_prunes_to_target(glue_run):
    out, metrics = glue_run
    summary, lines = _read(out)
    assert set(summary) == SUMMARY_KEYS
    assert summary["status"] == "completed" and summary["error"] is None
    assert (summary["task"], summary["task_family"], summary["model"]) == ("sst2", "glue", "tiny")
    assert (summary["pattern"], summary["pruning_type"], summary["target_sparsity"]) == ("4x1", "snip_momentum", 0.5)
    # The dev set's majority class is 30/48 = 0.625; the sentiment letter is learnt well beyond it.
    assert summary["metrics"]["eval/accuracy"] >= 0.9
    assert metrics == summary["metrics"] and next(iter(metrics)) == "eval/accuracy"
    assert summary["sparsity"]["pruned_ops_sparsity"] == pytest.approx(0.5, abs=0.005)
    assert summary["sparsity"]["linear_conv_sparsity"] < summary["sparsity"]["pruned_ops_sparsity"]
    assert [line["epoch"] for line in lines] == list(range(6))
    # 96 examples / batch 8 = 12 steps per epoch; dense through the 2 warm epochs, pruning over
    # steps 24..59, the target held through the cooldown epoch.
    assert [line["step"] for line in lines] == [12, 24, 36, 48, 60, 72]
    assert [line["sparsity"] for line in lines[:2]] == [0.0, 0.0]
    assert 0.0 < lines[2]["sparsity"] < lines[3]["sparsity"] < 0.5
    assert lines[-2]["sparsity"] == lines[-1]["sparsity"] == pytest.approx(0.5, abs=0.005)
    assert {"eval/accuracy", "eval/loss", "train/loss"} <= set(lines[-1])


def test_glue_run_saves_a_loadable_sparse_model(glue_run):
    out, _ = glue_run
    summary, _ = _read(out)
    assert (out / "model").is_dir() and not (out / "model.tmp").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    ops = summary["sparsity"]["ops"]
    zeros = sum(int((model.get_submodule(name).weight == 0).sum()) for name in ops)
    assert zeros == sum(op["zeros"] for op in ops.values())
    assert "max_length: 32" in (out / "config.yaml").read_text()


def test_squad_family_runs_end_to_end(make_config, tmp_path):
    cfg = make_config(
        "task=squad", "task.split_dev_by_article=2", "task.max_seq_length=64", "task.doc_stride=16",
        "per_device_train_batch_size=4", "pattern=2:4", "target_sparsity=0.5", "distill=kd",
        "distill.precompute=true",
    )
    metrics = run(cfg, tmp_path)
    summary, lines = _read(tmp_path)
    assert summary["status"] == "completed"
    assert (summary["task"], summary["task_family"], summary["main_metric"]) == ("squad", "squad", "eval/f1")
    assert set(metrics) == {"eval/f1", "eval/exact_match"}
    assert summary["pattern"] == "2:4" and summary["sparsity"]["pruned_ops_sparsity"] == pytest.approx(0.5)
    assert any("split_dev_by_article" in note for note in summary["notes"])
    assert (tmp_path / "predictions.json").is_file()
    AutoModelForQuestionAnswering.from_pretrained(tmp_path / "model")


def test_dense_run_reports_measured_zeros_and_no_recipe(make_config, tmp_path):
    run(make_config("do_prune=false", "max_train_samples=16"), tmp_path)
    summary, lines = _read(tmp_path)
    assert (summary["do_prune"], summary["pattern"], summary["pruning_type"], summary["target_sparsity"]) == (
        False, None, None, None,
    )
    assert summary["sparsity"]["pruned_ops_sparsity"] == 0.0
    assert len(summary["sparsity"]["ops"]) == 12  # 2 layers x (q, k, v, attention out, intermediate, output)
    assert lines[0]["sparsity"] == 0.0


def test_failed_run_leaves_a_failed_summary_and_no_model(make_config, tmp_path):
    with pytest.raises(ConfigError):
        run(make_config("model=bert-mini", f"model.name_or_path={tmp_path / 'missing'}"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("ConfigError: model.name_or_path=")
    assert summary["model"] == "bert-mini" and summary["task"] == "mrpc"
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(("overrides", "start", "end"), [
    # One optimizer step: the derived window is start=end=0, which a gradient criterion cannot score.
    (["max_train_samples=8"], "pruning: pruning_type='snip_momentum' scores weights with gradients of earlier steps",
     "(this run has 1 optimizer steps)"),
    (["+pruning.start_step=1", "+pruning.end_step=8"], "pruning.end_step=8: past the last optimizer step of this run (7; 8 steps",
     "so the target would never be reached"),
])
def test_a_pruning_window_this_run_cannot_hold_is_one_line(make_config, tmp_path, overrides, start, end):
    with pytest.raises(ConfigError) as caught:
        run(make_config(*overrides), tmp_path)
    message = str(caught.value)
    assert message.startswith(start) and message.endswith(end) and "\n" not in message
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(("overrides", "message"), [
    (["max_length=600"], "max_length=600: longer than the 512 tokens the model's position embeddings hold; give at most 512"),
    (["task=squad", "task.split_dev_by_article=2", "task.max_seq_length=513"],
     "task.max_seq_length=513: longer than the 512 tokens the model's position embeddings hold"),
    (["task=squad", "task.split_dev_by_article=2", "task.max_seq_length=null", "max_length=700"], "max_length=700: longer than the 512"),
])
def test_inputs_longer_than_the_model_s_positions_are_one_line(make_config, tmp_path, overrides, message, monkeypatch):
    def tokenize(*_):
        raise AssertionError("the inputs were tokenized before their length was checked")

    monkeypatch.setattr(GlueTask, "load", tokenize)
    monkeypatch.setattr(SquadTask, "load", tokenize)
    with pytest.raises(ConfigError) as caught:
        run(make_config(*overrides), tmp_path)
    assert str(caught.value).startswith(message)


def test_a_roberta_position_table_holds_two_tokens_fewer_than_its_rows(tmp_path):
    """RoBERTa's position ids start after the padding index (1): 514 rows hold 512 tokens."""
    RobertaConfig(max_position_embeddings=514, pad_token_id=1).save_pretrained(tmp_path)
    BertConfig(max_position_embeddings=512, pad_token_id=0).save_pretrained(tmp_path / "bert")
    assert PretrainedModel("roberta", str(tmp_path)).max_input_tokens() == 512
    assert PretrainedModel("bert", str(tmp_path / "bert")).max_input_tokens() == 512


def test_failed_verification_never_publishes_the_model(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(prunelab.app.stages, "VERIFY_ATOL", -1.0)  # no reload can match: verification fails
    with pytest.raises(RuntimeError, match="verify_loading"):
        run(make_config("max_train_samples=16"), tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert (tmp_path / "model.tmp").is_dir() and not (tmp_path / "model").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "prunelab", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_bad_target_is_one_clear_line(tmp_path):
    result = _cli("model=tiny", "target_sparsity=1.5", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "prunelab: error: target_sparsity=1.5: must be in [0, 1) (fraction of weights zeroed)"
    ]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_cli_unknown_group_option_lists_the_allowed_ones(tmp_path):
    result = _cli("pattern=3x3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("prunelab: error: pattern=3x3: no such option in group 'pattern'; available: ")
    assert "4x1" in line.split("available: ")[1].split(", ")
