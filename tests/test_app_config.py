"""The real config: every option of every group composes and instantiates; bad values fail with
one clear line naming the field."""
import copy
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification)

import prunelab
from prunelab.app.config import build
from prunelab.app.run import _describe
from prunelab.app.schema import check_config
from prunelab.app.stages import engine_config
from prunelab.errors import ConfigError
from prunelab.models import PretrainedModel, TinyBert, TinyDecoder
from prunelab.tasks.base import Task
from prunelab.train.pruning_window import IterativeSchedule, OneShotSchedule

from conftest import require_minilm

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_model():
    return TinyBert().load_model(AutoModelForSequenceClassification, num_labels=2)


def test_groups_hold_the_options_the_issue_names():
    assert {"bert-mini", "distilbert", "bert-base", "bert-large", "minilm-l6", "tiny"} <= set(options("model"))
    assert {"sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb", "mnli", "wnli"} <= set(options("task"))
    assert {"1x1", "4x1", "2:4", "2in4", "1xchannel"} <= set(options("pattern"))
    assert {"snip_momentum", "magnitude", "gradient", "snip", "movement", "pattern_lock"} <= set(options("pruner"))
    assert set(options("scheduler")) == {"iterative", "oneshot"}
    assert set(options("distill")) == {"none", "kd", "hidden_mse", "layerwise", "simkd"}


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_instantiates(make_config, name):
    if name == "minilm-l6-local":
        require_minilm()
    source = build(make_config(f"model={name}").model)
    assert isinstance(source, (PretrainedModel, TinyBert, TinyDecoder))
    assert source.name == ("minilm-l6" if name == "minilm-l6-local" else name)


@pytest.mark.parametrize("name", options("task"))
def test_every_task_option_instantiates(make_config, name):
    cfg = make_config(f"task={name}")
    task = build(cfg.task, data_root=cfg.data_root, max_length=32, max_train_samples=8, max_eval_samples=8, seed=0)
    assert isinstance(task, Task)
    family, head = TASK_HEADS.get(name.split("_")[0], ("glue", AutoModelForSequenceClassification))
    assert (task.family, task.auto_model_class()) == (family, head)


# Each task option's family and transformers head (every other option is a GLUE task).
TASK_HEADS = {
    "squad": ("squad", AutoModelForQuestionAnswering),
    "ner": ("token_classification", AutoModelForTokenClassification),
    "clm": ("language_modeling", AutoModelForCausalLM),
}


@pytest.mark.parametrize("pattern", options("pattern"))
@pytest.mark.parametrize("pruner", options("pruner"))
def test_every_pattern_and_pruner_prepares_the_engine(make_config, tiny_model, pattern, pruner):
    cfg = make_config(f"pattern={pattern}", f"pruner={pruner}", "target_sparsity=0.25", "progressive=false")
    if pruner in ("wanda", "sparsegpt"):  # one-shot from calibration inputs: per row (1x1) or N of every M, at N/M
        cfg = make_config(f"pattern={pattern}", f"pruner={pruner}", "scheduler=oneshot", "progressive=false")
        if pattern not in ("1x1", "1:4", "2:4", "2in4", "4:8"):
            with pytest.raises(ConfigError, match=f"pattern='{pattern}': pruning_type='{pruner}' chooses weights"):
                engine_config(cfg, steps_per_epoch=10)
            return
    if pruner == "obs" and pattern in ("head", "neuron"):  # second order: one module per Fisher block
        with pytest.raises(ValueError, match=f"does not prune coupled units \\(pattern='{pattern}'\\)"):
            prunelab.prepare_pruning(tiny_model, engine_config(cfg, steps_per_epoch=10))
        return
    engine = prunelab.prepare_pruning(tiny_model, engine_config(cfg, steps_per_epoch=10))
    assert engine.report()["groups"][0]["pattern"] == cfg.pruning.pattern


def test_progressive_switch_renames_the_pruning_type(make_config):
    cfg = make_config("pruner=snip", "progressive=true")
    assert cfg.pruning.pruning_type == "snip_progressive"
    assert make_config("pruner=snip").pruning.pruning_type == "snip"


def test_colon_pattern_and_its_alias_compose_to_the_same_string(make_config):
    assert make_config("pattern=2:4").pruning.pattern == make_config("pattern=2in4").pruning.pattern == "2:4"


@pytest.mark.parametrize("name", options("scheduler"))
def test_every_scheduler_option_gives_engine_steps(make_config, name):
    cfg = make_config(f"scheduler={name}", "num_train_epochs=4", "sparsity_warm_epochs=1", "cooldown_epochs=1")
    keys = engine_config(cfg, steps_per_epoch=10)
    schedule = build(cfg.scheduler)
    assert isinstance(schedule, (IterativeSchedule, OneShotSchedule))
    if name == "iterative":
        # 40 steps: pruning from step 10 (after 1 warm epoch) to step 29 (the last before 1 cooldown epoch).
        assert (keys["start_step"], keys["end_step"], keys["pruning_frequency"]) == (10, 29, 1)
    else:
        assert keys["start_step"] == keys["end_step"] == 10


@pytest.mark.parametrize("name", options("distill"))
def test_every_distill_option_instantiates(make_config, tiny_model, name):
    cfg = make_config(f"distill={name}")
    task = build(make_config().task, data_root=cfg.data_root, max_length=32, max_train_samples=8,
                 max_eval_samples=8, seed=0)
    # A copy: feature distillers freeze parts of their student and hook its head.
    distiller = build(cfg.distill)(task=task, student=copy.deepcopy(tiny_model))
    if name == "none":
        assert distiller is None
    else:
        assert distiller.teacher is not tiny_model
        assert torch.equal(distiller.teacher.classifier.weight, tiny_model.classifier.weight)


@pytest.mark.parametrize("name", [n for n in options("experiment") if not n.startswith("table_")])
def test_every_experiment_preset_composes_and_validates(make_config, name):
    if name == "demo":
        require_minilm()
    given = ["model.name_or_path=/models/sparse", "distill.teacher=/models/dense"] if name.startswith("pofa") else []
    if name.startswith("bert-mini-squad-") and name != "bert-mini-squad-dense" or name.endswith("-minilm") and name != "squad-minilm-dense":
        given = ["model.name_or_path=/models/dense"]
    if name.endswith("-squad-unstructured90") or name == "obert-squad-4block80":
        given = ["distill.teacher=/models/dense"]
    cfg = check_config(make_config(f"experiment={name}", *given, shrink=False))
    described = _describe(cfg)
    # SQuAD has no task.name: a run names it from the Hydra choice.
    assert described["task"] in ("mrpc", "sst2") or cfg.task._target_.endswith("SquadTask")
    assert (described["pattern"] is None) == (not cfg.do_prune)
    if cfg.do_prune:
        prunelab.sparsity.parse_config(engine_config(cfg, steps_per_epoch=230))


def test_mixed_preset_describes_both_patterns(make_config):
    cfg = make_config("experiment=bert-mini-mrpc-mixed", shrink=False)
    assert _describe(cfg)["pattern"] == "1x1+4x1"
    groups = prunelab.sparsity.parse_config(engine_config(cfg, steps_per_epoch=230)).groups
    assert [(g.pattern, g.pruning_scope, g.min_sparsity_ratio_per_op) for g in groups] == [
        ("1x1", "local", 0.0),
        ("4x1", "global", 0.5),
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("target_sparsity=1.0", r"^target_sparsity=1.0: must be in \[0, 1\)"),
        ("target_sparsity=-0.1", r"^target_sparsity=-0.1: must be in \[0, 1\)"),
        ("num_train_epochs=-1", r"^num_train_epochs=-1: must be >= 0 \(0: prune once and evaluate, no training\)"),
        ("mixed_precision=fp8", r"^mixed_precision=fp8: allowed \['no', 'fp16', 'bf16'\]"),
        ("data_root=/nonexistent/dir", r"^data_root=/nonexistent/dir: directory not found"),
        ("cooldown_epochs=-1", r"^cooldown_epochs=-1: must be >= 0"),
        ("lr_scheduler_type=sawtooth", r"^lr_scheduler_type=sawtooth: allowed \['linear', 'cosine'"),
    ],
)
def test_bad_values_name_the_field(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(make_config(override))


def test_dense_runs_do_not_check_the_target(make_config):
    check_config(make_config("do_prune=false", "target_sparsity=1.5"))


def test_window_without_pruning_steps_is_refused(make_config):
    cfg = make_config("num_train_epochs=2", "sparsity_warm_epochs=1", "cooldown_epochs=1")
    with pytest.raises(ConfigError, match=r"^sparsity_warm_epochs=1 \+ cooldown_epochs=1: leave no pruning steps"):
        engine_config(cfg, steps_per_epoch=10)


def test_unloadable_model_names_the_field(make_config, tmp_path):
    source = build(make_config("model=bert-mini", f"model.name_or_path={tmp_path}").model)
    with pytest.raises(ConfigError, match=r"^model.name_or_path=.*: no tokenizer can be loaded there"):
        source.load_tokenizer()
    with pytest.raises(ConfigError, match=r"^model.name_or_path=.*: cannot load a model"):
        source.load_model(AutoModelForSequenceClassification, num_labels=2)
