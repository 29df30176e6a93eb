"""The composed config is typed and checked whole before anything loads: unknown keys, wrong types
and settings that would have no effect fail with one line naming the key."""
from pathlib import Path

import pytest

import prunelab

from prunelab.app.schema import check_config, check_inert_overrides
from prunelab.app.stages import check_pruning, engine_config
from prunelab.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["target_sparsity=abc"], "target_sparsity='abc': must be a number"),
        (["seed=abc"], "seed='abc': must be an integer"),
        (["learning_rate=abc"], "learning_rate='abc': must be a number"),
        (["max_train_samples=abc"], "max_train_samples='abc': must be an integer or null"),
        (["do_prune=maybe"], "do_prune='maybe': must be true or false"),
        (["+apply_quantization=true"], "apply_quantization=True: no such key (use quant=dynamic|static|qat)"),
        (["+learning_rat=1e-3"], "learning_rat=0.001: no such key (did you mean learning_rate?)"),
        (["+model.depth=3"], "model.depth=3: no such key for this model option; allowed: name, hidden_size, "
                             "num_hidden_layers, num_attention_heads, intermediate_size, max_position_embeddings, tokenizer"),
        (["model.hidden_size=wide"], "model.hidden_size='wide': must be an integer"),
        (["+task.max_length=12"], "task.max_length=12: no such key for this task option; allowed: name, text_fields, "
                                  "num_labels, metrics, main_metric, local, hub_config, hub_dataset, eval_split, label_names"),
        (["seed=-1"], "seed=-1: must be in [0, 2**32 - 1] (numpy's seed range)"),
        (["max_grad_norm=-1"], "max_grad_norm=-1: must be > 0 (null: no clipping)"),
        (["max_grad_norm=0"], "max_grad_norm=0: must be > 0 (null: no clipping)"),
        (["distill=kd", "distill_loss_weight=-1"], "distill_loss_weight=-1: must be > 0 (for no distillation, use distill=none)"),
        (["distill=layerwise", "distill_loss_weight=0"], "distill_loss_weight=0: must be > 0 (for no distillation, use distill=none)"),
        (["distill_loss_weight=4.5"], "distill_loss_weight=4.5: has no effect without distillation; add distill=kd|hidden_mse|layerwise|simkd"),
        (["scheduler=oneshot", "pruning_frequency=10"],
         "pruning_frequency=10: has no effect with scheduler=oneshot (one update)"),
        (["checkpointing_steps=often"], "checkpointing_steps=often: give epoch, a positive number of optimizer steps, or null"),
        (["checkpointing_steps=0"], "checkpointing_steps=0: give epoch, a positive number of optimizer steps, or null"),
        (["resume_from_checkpoint=auto", "overwrite_output_dir=true"],
         "overwrite_output_dir=true with resume_from_checkpoint=auto: a resumed run continues its run directory; "
         "drop one of the two"),
        (["adam_betas=[0.9]"], "adam_betas=[0.9]: give [beta1, beta2], each in [0, 1)"),
        (["do_prune=false", "pruning_config=recipe.yaml"], "pruning_config=recipe.yaml: has no effect with do_prune=false"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(make_config, overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_config(make_config(*overrides))
    assert str(caught.value) == message


@pytest.mark.parametrize(("override", "message"), [
    ("pattern=2\\:4", "pattern=2:4: has no effect with do_prune=false (a dense run)"),
    ("target_sparsity=0.5", "target_sparsity=0.5: has no effect with do_prune=false"),
    ("cooldown_epochs=2", "cooldown_epochs=2: has no effect with do_prune=false"),
    ("pruner=magnitude", "pruner=magnitude: has no effect with do_prune=false"),
    ("pruning.pruning_scope=local", "pruning.pruning_scope=local: has no effect with do_prune=false"),
])
def test_a_dense_run_refuses_pruning_overrides(make_config, override, message):
    dense = check_config(make_config("do_prune=false"))
    with pytest.raises(ConfigError) as caught:
        check_inert_overrides(dense, ["seed=3", override])
    assert str(caught.value).startswith(message)
    check_inert_overrides(check_config(make_config()), ["seed=3", override])  # a pruning run reads it


@pytest.mark.parametrize("override", ["target_sparsity=0.5", "pattern=2\\:4", "progressive=true", "pruning_frequency=10",
                                      "cooldown_epochs=1", "scheduler=oneshot"])
def test_a_pattern_lock_run_refuses_what_it_ignores(make_config, override):
    locked = check_config(make_config("pruner=pattern_lock"))
    with pytest.raises(ConfigError) as caught:
        check_inert_overrides(locked, ["pruner=pattern_lock", override])
    assert str(caught.value) == (f"{override.replace(chr(92), '')}: has no effect with pruner=pattern_lock "
                                 "(it keeps the zeros the model has); drop it")
    check_inert_overrides(locked, ["pruner=pattern_lock", "learning_rate=1e-4", "pruning.excluded_op_names=[classifier]"])


def test_a_sweep_is_refused_only_when_every_job_ignores_the_override(make_config):
    """A sweep's config is composed from its fixed overrides; a rule reading a swept key is off."""
    dense = check_config(make_config("do_prune=false"))
    with pytest.raises(ConfigError, match=r"^pattern=4x1,2:4: has no effect with do_prune=false"):
        check_inert_overrides(dense, ["do_prune=false", "pattern=4x1,2\\:4"])
    check_inert_overrides(dense, ["do_prune=false,true", "pattern=4x1,2\\:4"])
    check_inert_overrides(dense, ["experiment=bert-mini-mrpc-dense,bert-mini-mrpc-4x1", "pattern=4x1,2\\:4"])
    locked = check_config(make_config("pruner=pattern_lock"))
    with pytest.raises(ConfigError, match=r"^target_sparsity=0.5,0.8: has no effect with pruner=pattern_lock"):
        check_inert_overrides(locked, ["pruner=pattern_lock", "target_sparsity=0.5,0.8"])
    check_inert_overrides(locked, ["pruner=pattern_lock,snip_momentum", "target_sparsity=0.5,0.8"])


def test_a_dense_run_keeps_the_keys_that_choose_the_measured_ops(make_config):
    dense = check_config(make_config("do_prune=false"))
    check_inert_overrides(dense, ["pruning.excluded_op_names=[classifier]", "pruning.pruning_op_types=[Linear]",
                                  "seed=3", "learning_rate=1e-4"])


@pytest.mark.parametrize("override", ["export.threads=4", "export.sequence=384", "export.batch_sizes=[1]"])
def test_an_export_without_latency_runs_refuses_latency_inputs(make_config, override):
    untimed = check_config(make_config("export=compact", "export.latency_runs=0"))
    with pytest.raises(ConfigError) as caught:
        check_inert_overrides(untimed, ["export=compact", "export.latency_runs=0", override])
    assert str(caught.value) == (f"{override}: has no effect with export.latency_runs=0 (no latency measurement); "
                                 "drop it, or set export.latency_runs > 0")
    timed = check_config(make_config("export=compact"))
    check_inert_overrides(timed, ["export=compact", override])  # a timed export reads it


def test_types_are_converted_and_kept(make_config):
    cfg = check_config(make_config("learning_rate=1", "sparsity_warm_epochs=1", "checkpointing_steps=25"))
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert cfg.checkpointing_steps == "25"


@pytest.mark.parametrize(("pattern", "target"), [("2:4", 0.5), ("2in4", 0.5), ("1:4", 0.25), ("4:8", 0.5), ("4x1", 0.8),
                                                 ("1xchannel", 0.8)])
def test_each_pattern_brings_a_target_it_can_reach(make_config, pattern, target):
    cfg = check_config(make_config(f"pattern={pattern}"))
    assert cfg.target_sparsity == cfg.pruning.target_sparsity == target
    check_pruning(cfg)


def test_an_explicit_target_wins_and_an_infeasible_one_is_one_line(make_config):
    assert check_config(make_config("pattern=2:4", "target_sparsity=0.3")).target_sparsity == 0.3
    with pytest.raises(ConfigError) as caught:
        check_pruning(check_config(make_config("pattern=2:4", "target_sparsity=0.8")))
    assert str(caught.value) == "pruning: target_sparsity=0.8 is above 2/4=0.5, the most pattern '2:4' can prune"


def test_explicit_engine_steps_are_honoured_not_overwritten(make_config):
    cfg = check_config(make_config("+pruning.start_step=1", "+pruning.end_step=1", "num_train_epochs=2"))
    keys = engine_config(cfg, steps_per_epoch=10)
    assert (keys["start_step"], keys["end_step"]) == (1, 1)
    assert keys["pruning_frequency"] == 1  # the one the scheduler derives, as the config gives none


def test_engine_steps_and_the_window_keys_cannot_both_say_when(make_config):
    cfg = check_config(make_config("+pruning.start_step=3", "sparsity_warm_epochs=1", "num_train_epochs=2"))
    with pytest.raises(ConfigError) as caught:
        check_pruning(cfg)
    assert str(caught.value) == "pruning.start_step=3 and sparsity_warm_epochs=1.0 both say when pruning happens; keep one"


def test_an_inc_recipe_file_replaces_the_pruning_keys(make_config):
    recipe = Path(__file__).resolve().parents[1] / "docs" / "examples" / "inc_recipe.yaml"
    cfg = check_config(make_config(f"pruning_config={recipe}", "num_train_epochs=3"))
    check_pruning(cfg)
    keys = engine_config(cfg, steps_per_epoch=230)
    # The file's own schedule, not the one the scheduler would derive from the pruning window.
    assert (keys["start_step"], keys["end_step"], keys["pruning_frequency"]) == (230, 459, 6)
    groups = prunelab.sparsity.parse_config(keys).groups
    assert [(g.pattern, g.target_sparsity) for g in groups] == [("4x1", 0.8), ("2:4", 0.5)]


def test_an_inc_recipe_and_the_window_keys_cannot_both_say_when(make_config):
    recipe = Path(__file__).resolve().parents[1] / "docs" / "examples" / "inc_recipe.yaml"
    cfg = check_config(make_config(f"pruning_config={recipe}", "cooldown_epochs=1", "num_train_epochs=3"))
    with pytest.raises(ConfigError) as caught:
        check_pruning(cfg)
    assert str(caught.value) == "pruning.end_step=459 and cooldown_epochs=1.0 both say when pruning happens; keep one"


def test_a_value_a_preset_leaves_to_the_user_must_be_given(make_config):
    with pytest.raises(ConfigError) as caught:
        check_config(make_config("model=bert-mini", "experiment=pofa-stage1"))
    assert str(caught.value) == "model.name_or_path: must be given (add model.name_or_path=... to the command)"



def test_a_window_only_a_short_run_cannot_hold_is_not_refused_before_the_steps_are_known(make_config):
    # 60 gradients per Fisher fit between the updates of a run of 2 x 4,210 steps (SST-2 at batch
    # 16: an update every 210 steps), not of a tiny run's 2 x 8: before the data loads nobody knows
    # which (tests/test_cli_probes.py: the tiny run refused once its length is known).
    check_pruning(check_config(make_config("pruner=obs", "pruning.obs.num_grads=60", "num_train_epochs=2")))
    # What holds for any length is still refused before the data loads.
    with pytest.raises(ConfigError) as caught:
        check_pruning(check_config(make_config("pruner=obs", "pruning.obs.num_grads=60", "pruning_frequency=50")))
    assert "num_grads=60 x num_recomputations=1 gradient steps must fit before each mask update, but " \
           "pruning_frequency=50 leaves 50" in str(caught.value)
