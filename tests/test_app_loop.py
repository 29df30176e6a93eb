"""The training loop drives a list of callbacks with INC's hook names, once per optimizer step."""
import pytest
import torch
from accelerate import Accelerator

from prunelab.app.config import build
from prunelab.models import TinyBert, character_tokenizer
from prunelab.train.loop import Trainer, TrainConfig
from prunelab.train.pruning_window import IterativeSchedule, PruningSteps


class RecordingCallbacks:
    """Stands in for INC's compression_manager.callbacks: records the hook sequence."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self):
        self.calls.append("begin")

    def on_step_begin(self, step):
        self.calls.append(("step", step))

    def on_before_optimizer_step(self):
        self.calls.append("before")

    def on_after_optimizer_step(self):
        self.calls.append("after")

    def on_train_end(self):
        self.calls.append("end")


@pytest.fixture
def trainer_for(make_config):
    def make(**config):
        cfg = make_config("task=sst2")
        task = build(cfg.task, data_root=cfg.data_root, max_length=32, max_train_samples=40, max_eval_samples=16, seed=0)
        data = task.load(character_tokenizer())
        model = TinyBert().load_model(task.auto_model_class(), **task.model_kwargs())
        settings = dict(learning_rate=1e-3, num_train_epochs=2, per_device_train_batch_size=4, per_device_eval_batch_size=8,
                        progress_bar=False)
        settings.update(config)
        return Trainer(model, task, data, TrainConfig(**settings), Accelerator(cpu=True)), model

    return make


def test_hooks_run_once_per_optimizer_step_with_accumulation(trainer_for):
    trainer, _ = trainer_for(gradient_accumulation_steps=3)
    # 40 examples / batch 4 = 10 micro-batches = 3 full steps + 1 short one per epoch.
    assert (trainer.steps_per_epoch, trainer.total_steps) == (4, 8)
    callbacks = RecordingCallbacks()
    evaluations = []
    final = trainer.fit(callbacks=[callbacks], on_evaluate=evaluations.append)
    steps = [call[1] for call in callbacks.calls if isinstance(call, tuple)]
    assert steps == list(range(8))
    expected = ["begin"] + [c for s in range(8) for c in (("step", s), "before", "after")] + ["end"]
    assert callbacks.calls == expected
    assert [(e.epoch, e.step) for e in evaluations] == [(0, 4), (1, 8)]
    assert final is evaluations[-1]
    assert set(final.metrics) == {"eval/accuracy", "eval/loss", "train/loss"}
    assert final.logits[0].shape == (16, 2)


def test_lr_schedule_spans_the_optimizer_steps(trainer_for):
    trainer, _ = trainer_for(lr_scheduler_type="linear", num_warmup_steps=2, gradient_accumulation_steps=2)
    trainer.fit()
    # Linear decay reaches 0 exactly at the last optimizer step (5 per epoch x 2 epochs).
    assert trainer.total_steps == 10
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_training_moves_weights_and_weight_decay_skips_vectors(trainer_for):
    trainer, model = trainer_for(weight_decay=0.1)
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    before = model.classifier.weight.detach().clone()
    trainer.fit()
    assert not torch.equal(before, model.classifier.weight)


def test_pruning_window_steps():
    steps = PruningSteps(steps_per_epoch=100, num_train_epochs=10, sparsity_warm_epochs=1, cooldown_epochs=2)
    keys = IterativeSchedule("cos").engine_keys(steps, pruning_frequency=None)
    # Window: step 100 (after 1 epoch) to 799 (before the last 2 epochs); 700 steps / 40 updates.
    assert keys == {"start_step": 100, "end_step": 799, "pruning_frequency": 17, "sparsity_decay_type": "cos",
                    "initial_sparsity": 0.0}
    assert IterativeSchedule().engine_keys(steps, pruning_frequency=50)["pruning_frequency"] == 50
