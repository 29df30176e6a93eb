"""What GMP* and oBERT's recipes need from the schedule: a first update straight to
initial_sparsity, a cubic rise, and the learning rate rewound after every pruning update."""
import pytest
from torch import nn

import prunelab
from prunelab.app import stages
from prunelab.app.run import run
from prunelab.app.schema import check_inert_overrides
from prunelab.errors import ConfigError
from prunelab.sparsity.schedules import Schedule
from prunelab.train.loop import RewoundLinear


def test_initial_sparsity_is_reached_at_the_first_update_then_the_cubic_rise():
    schedule = Schedule(start=10, end=40, frequency=10, decay="cubic", target=0.9, initial=0.7)
    assert schedule.pruning_steps == [10, 20, 30, 40]
    targets = [schedule.sparsity_at_update(k) for k in range(4)]
    assert targets == pytest.approx([0.7, 0.9 - 0.2 * (2 / 3) ** 3, 0.9 - 0.2 * (1 / 3) ** 3, 0.9])
    assert schedule.sparsity_at(9) == 0.0 and schedule.first_pruning_step == 10
    assert Schedule(start=10, end=40, frequency=10, decay="cubic", target=0.9).pruning_steps == [20, 30, 40]


def test_magnitude_prunes_to_initial_sparsity_at_the_window_start():
    model = nn.Sequential(nn.Linear(8, 16))
    pruning = prunelab.prepare_pruning(model, {"pattern": "1x1", "pruning_type": "magnitude", "target_sparsity": 0.75,
                                               "initial_sparsity": 0.5, "start_step": 2, "end_step": 4,
                                               "pruning_frequency": 2, "excluded_op_names": []})
    pruning.on_train_begin()
    seen = []
    for step in range(5):
        pruning.on_step_begin(step)
        pruning.on_before_optimizer_step()
        pruning.on_after_optimizer_step()
        seen.append(float((model[0].weight == 0).float().mean()))
    assert seen == [0.0, 0.0, 0.5, 0.5, 0.75]
    assert pruning.pruning_steps() == [2, 4]


def test_initial_sparsity_above_the_target_or_at_step_zero_with_gradients_is_refused():
    model = nn.Sequential(nn.Linear(8, 16))
    base = {"pattern": "1x1", "start_step": 0, "end_step": 4, "pruning_frequency": 2, "excluded_op_names": []}
    with pytest.raises(ValueError, match=r"initial_sparsity=0.8 exceeds target_sparsity=0.5"):
        prunelab.prepare_pruning(model, {**base, "target_sparsity": 0.5, "initial_sparsity": 0.8, "pruning_type": "magnitude"})
    with pytest.raises(ValueError, match=r"a first update to initial_sparsity=0.3 needs start_step >= 1"):
        prunelab.prepare_pruning(model, {**base, "target_sparsity": 0.5, "initial_sparsity": 0.3, "pruning_type": "snip"})


def test_rewound_learning_rate_restarts_at_every_pruning_update():
    factor = RewoundLinear([4, 8], total_steps=12)
    assert [factor(step) for step in range(12)] == pytest.approx(
        [1, 0.75, 0.5, 0.25, 1, 0.75, 0.5, 0.25, 1, 0.75, 0.5, 0.25])


def test_lr_rewinding_in_a_run_follows_the_pruning_updates(make_config, tmp_path, monkeypatch):
    """12 steps per epoch, 2 epochs: the window is steps 0-23, updates every 6 steps (update 0
    prunes nothing): the learning rate, read from the optimizer at every step, restarts at the
    pruning updates 6, 12 and 18 and decays linearly to 0 in between."""
    cfg = make_config("task=sst2", "max_train_samples=96", "num_train_epochs=2", "learning_rate=1e-3",
                      "pruner=magnitude", "pattern=1x1", "target_sparsity=0.5", "pruning_frequency=6",
                      "scheduler.lr_rewinding=true")
    captured = {}

    class Recording(stages.Trainer):
        def _optimizer_step(self, callbacks):
            captured.setdefault("lr", []).append(self.optimizer.param_groups[0]["lr"])
            super()._optimizer_step(callbacks)

    monkeypatch.setattr(stages, "Trainer", Recording)
    run(cfg, tmp_path)
    lr = captured["lr"]
    assert len(lr) == 24
    restarts = [step for step in range(1, 24) if lr[step] > lr[step - 1]]
    assert restarts == [6, 12, 18]  # the pruning updates (6 steps apart from step 0; update 0 prunes nothing)
    assert lr[0] == pytest.approx(1e-3) and lr[6] == pytest.approx(1e-3) and lr[5] == pytest.approx(1e-3 / 6)


def test_lr_schedule_keys_with_lr_rewinding_on_the_command_line_are_refused(make_config):
    overrides = ["scheduler.lr_rewinding=true", "lr_scheduler_type=cosine"]
    with pytest.raises(ConfigError, match=r"^lr_scheduler_type=cosine: has no effect with scheduler.lr_rewinding=true"):
        check_inert_overrides(make_config(*overrides), overrides)


def test_update_every_epochs_sets_the_frequency_in_epochs(make_config):
    from prunelab.app.stages import engine_config

    cfg = make_config("scheduler.update_every_epochs=2", "num_train_epochs=10", "sparsity_warm_epochs=1", "cooldown_epochs=2")
    keys = engine_config(cfg, steps_per_epoch=230)
    assert (keys["start_step"], keys["end_step"], keys["pruning_frequency"]) == (230, 8 * 230 - 1, 460)
    with pytest.raises(ConfigError, match=r"^pruning_frequency=5 and scheduler.update_every_epochs=2 both say"):
        engine_config(make_config("scheduler.update_every_epochs=2", "pruning_frequency=5"), steps_per_epoch=230)
