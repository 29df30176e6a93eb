"""Knowledge distillation: each option's loss by hand (kd, hidden_mse, layerwise, simkd), precomputed teacher
targets equal to online ones under any batch order and padding (sentence-level GLUE logits, per-token
SQuAD logits, pooled features), replacing vs adding to the task loss in the loop, the classifier
without weight decay, a short run through the training loop with each option, and simkd's projector
trained by the trainer's optimizer (its LR schedule, joint gradient clipping)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from prunelab.app.config import build
from prunelab.errors import ConfigError
from prunelab.models import TinyBert, character_tokenizer
from prunelab.train.batching import EXAMPLE_INDEX, IndexedCollator, IndexedDataset
from prunelab.train.distillation import KnowledgeDistiller
from prunelab.train.feature_distillation import HiddenStateKnowledgeDistiller, ReusedClassifierKnowledgeDistiller
from prunelab.train.loop import Trainer, TrainConfig

from conftest import FixedLogits


def _setup(make_config, *overrides):
    cfg = make_config(*overrides)
    task = build(cfg.task, data_root=cfg.data_root, max_length=64, max_train_samples=None, max_eval_samples=None, seed=0)
    data = task.load(character_tokenizer())
    torch.manual_seed(0)
    student = TinyBert().load_model(task.auto_model_class(), **task.model_kwargs()).eval()
    return task, data, student


def _distillers(task, data, student, **kwargs):
    ordered = DataLoader(IndexedDataset(data.train), batch_size=16, collate_fn=IndexedCollator(data.collator))
    online = KnowledgeDistiller(task, student, precompute=False, **kwargs)
    stored = KnowledgeDistiller(task, student, precompute=True, **kwargs)
    for distiller in (online, stored):
        distiller.prepare(Accelerator(cpu=True), ordered)
    # The student drifts from its starting copy (the teacher) so the loss is not zero.
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return online, stored


def _batch(data, indices):
    batch = IndexedCollator(data.collator)([(i, data.train[i]) for i in indices])
    return batch, batch.pop(EXAMPLE_INDEX)


def test_kd_loss_is_weighted_kl_at_temperature(make_config):
    task, data, student = _setup(make_config, "task=mrpc")
    online, stored = _distillers(task, data, student, temperature=2.0, loss_weight=3.0)
    batch, index = _batch(data, [7, 70, 3, 41, 88])
    with torch.no_grad():
        outputs = student(**batch)
        teacher = online.teacher(**batch).logits
        loss = online.extra_loss(outputs, batch, index)
    p_teacher = F.softmax(teacher / 2.0, dim=-1)
    by_hand = (p_teacher * (p_teacher.log() - F.log_softmax(outputs.logits / 2.0, dim=-1))).sum(-1).mean() * 4.0 * 3.0
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-3)
    assert loss.item() > 1e-3


def test_kd_loss_on_fixed_logits_is_the_hand_computed_kl(make_config):
    task, data, student = _setup(make_config, "task=mrpc")
    distiller = KnowledgeDistiller(task, student, temperature=2.0, loss_weight=3.0)
    # At T=2 the first teacher row is softmax([0, ln 3]) = [1/4, 3/4]; the student says [1/2, 1/2]
    # on both rows; the second row agrees with the teacher (KL 0).
    distiller.teacher = FixedLogits(torch.tensor([[0.0, 2 * math.log(3)], [0.0, 0.0]]))
    distiller.prepare(Accelerator(cpu=True), _ordered(data))
    loss = distiller.extra_loss(SimpleNamespace(logits=torch.zeros(2, 2)), {}, torch.tensor([0, 1]))
    kl_first_row = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(teacher || student)
    # Mean over the batch's rows, times T^2 = 4, times the loss weight 3.
    assert loss.item() == pytest.approx(kl_first_row / 2 * 4 * 3, rel=1e-6)


@pytest.mark.parametrize("task_name", ["mrpc", "stsb", "squad"])
def test_precomputed_teacher_logits_equal_online_ones(make_config, task_name):
    overrides = ["task.split_dev_by_article=2", "task.max_seq_length=64", "task.doc_stride=16"] if task_name == "squad" else []
    task, data, student = _setup(make_config, f"task={task_name}", *overrides)
    online, stored = _distillers(task, data, student)
    # A shuffled batch padded to a different length than the in-order batches of the precompute pass.
    indices = [len(data.train) - 1, 0, 2] if task_name == "squad" else [90, 5, 33, 61]
    batch, index = _batch(data, indices)
    with torch.no_grad():
        outputs = student(**batch)
        expected = online.extra_loss(outputs, batch, index)
        assert stored.extra_loss(outputs, batch, index).item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert expected.item() > 0


def test_non_positive_temperature_is_refused(make_config):
    task, _, student = _setup(make_config, "task=sst2")
    with pytest.raises(ConfigError, match=r"^distill.temperature=0: must be > 0"):
        KnowledgeDistiller(task, student, temperature=0)


@pytest.mark.parametrize("make", [KnowledgeDistiller, HiddenStateKnowledgeDistiller, ReusedClassifierKnowledgeDistiller])
def test_non_positive_loss_weight_is_refused(make_config, make):
    task, _, student = _setup(make_config, "task=sst2")
    with pytest.raises(ConfigError, match=r"^distill.loss_weight=-0.5: must be > 0"):
        make(task, student, loss_weight=-0.5)


# ---- replace_task_loss, hidden_mse, simkd, classifier without weight decay ---------------------

def _ordered(data):
    return DataLoader(IndexedDataset(data.train), batch_size=16, collate_fn=IndexedCollator(data.collator))


def _drift(model, scale=0.2):
    """The student moves away from its starting copy (the teacher) so the losses are not zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


def _prepared(distiller, data):
    distiller.prepare(Accelerator(cpu=True), _ordered(data))
    return distiller


def _deeper_teacher(task, directory):
    """A 4-layer tiny BERT saved where ``distill.teacher`` can load it."""
    torch.manual_seed(3)
    TinyBert(num_hidden_layers=4).load_model(task.auto_model_class(), **task.model_kwargs()).save_pretrained(directory)
    return str(directory)


def test_hidden_mse_is_weighted_mse_of_the_last_hidden_states(make_config):
    task, data, student = _setup(make_config, "task=mrpc")
    distiller = _prepared(HiddenStateKnowledgeDistiller(task, student, loss_weight=5.0), data)
    _drift(student)
    batch, index = _batch(data, [7, 70, 3, 41, 88])
    with torch.no_grad():
        outputs = student(**batch, output_hidden_states=True)
        loss = distiller.extra_loss(outputs, batch, index)
        teacher = distiller.teacher(**batch, output_hidden_states=True).hidden_states[-1]
    by_hand = 5.0 * ((outputs.hidden_states[-1] - teacher) ** 2).mean()
    assert distiller.pairs == [(2, 2)] and distiller.replaces_task_loss
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() > 1e-3


def test_layerwise_preset_is_task_loss_plus_weighted_mean_mse_of_every_layer(make_config):
    cfg = make_config("task=mrpc", "distill=layerwise")
    task, data, student = _setup(make_config, "task=mrpc")
    distiller = _prepared(build(cfg.distill)(task=task, student=student), data)
    _drift(student)
    batch, index = _batch(data, [7, 70, 3, 41, 88])
    with torch.no_grad():
        outputs = student(**batch, output_hidden_states=True)
        loss = distiller.extra_loss(outputs, batch, index)
        teacher = distiller.teacher(**batch, output_hidden_states=True).hidden_states
    # TinyBert has 2 layers: states 1 and 2 are matched, not the embeddings (0).
    by_hand = 5.0 * (((outputs.hidden_states[1] - teacher[1]) ** 2).mean() + ((outputs.hidden_states[2] - teacher[2]) ** 2).mean()) / 2
    assert distiller.pairs == [(1, 1), (2, 2)] and not distiller.replaces_task_loss and distiller.frozen == []
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() > 1e-3
    assert build(make_config("task=mrpc", "distill=layerwise", "distill_loss_weight=2").distill)(
        task=task, student=student).loss_weight == 2.0


def test_all_layers_of_a_shallower_student_need_a_layer_map(make_config, tmp_path):
    task, _, student = _setup(make_config, "task=mrpc")
    teacher = _deeper_teacher(task, tmp_path / "teacher")
    with pytest.raises(ConfigError, match=r"^distill.layers=all: the student has 2 layers and the teacher 4; give distill.layer_map"):
        HiddenStateKnowledgeDistiller(task, student, teacher=teacher, layers="all")
    mapped = HiddenStateKnowledgeDistiller(task, student, teacher=teacher, layers="all", layer_map={1: 2, 2: 4})
    assert mapped.pairs == [(1, 2), (2, 4)]
    with pytest.raises(ConfigError, match=r"^distill.layers=every: give a list of hidden-state indices, all"):
        HiddenStateKnowledgeDistiller(task, student, layers="every")


def test_hidden_mse_replacing_the_task_loss_freezes_what_it_cannot_reach(make_config):
    task, _, student = _setup(make_config, "task=mrpc")
    replacing = HiddenStateKnowledgeDistiller(task, student)
    # The last hidden state reaches neither the pooler nor the classifier: the reference's optimizer
    # left them untouched (no gradient); frozen, the optimizer and DDP leave them out too.
    assert sorted(replacing.frozen) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias", "classifier.weight"]
    assert not student.classifier.weight.requires_grad and student.bert.encoder.layer[1].output.dense.weight.requires_grad
    _, _, other = _setup(make_config, "task=mrpc")
    middle = HiddenStateKnowledgeDistiller(task, other, layers=[1])
    assert {name.split(".")[3] for name in middle.frozen if name.startswith("bert.encoder.layer.")} == {"1"}
    _, _, adding = _setup(make_config, "task=mrpc")
    assert HiddenStateKnowledgeDistiller(task, adding, replace_task_loss=False).frozen == []
    assert all(p.requires_grad for p in adding.parameters())


def test_hidden_mse_layer_map_matches_a_deeper_teacher(make_config, tmp_path):
    task, data, student = _setup(make_config, "task=mrpc")
    teacher = _deeper_teacher(task, tmp_path / "teacher")
    distiller = _prepared(HiddenStateKnowledgeDistiller(task, student, teacher=teacher, loss_weight=2.0,
                                                        layer_map={1: 2, -1: -1}), data)
    assert distiller.pairs == [(1, 2), (2, 4)]
    batch, index = _batch(data, [1, 2, 3])
    with torch.no_grad():
        outputs = student(**batch, output_hidden_states=True)
        loss = distiller.extra_loss(outputs, batch, index)
        states = distiller.teacher(**batch, output_hidden_states=True).hidden_states
    s = outputs.hidden_states
    by_hand = 2.0 * (((s[1] - states[2]) ** 2).mean() + ((s[2] - states[4]) ** 2).mean()) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # Without a map the last layer matches the teacher's last; any other depth needs the map.
    assert HiddenStateKnowledgeDistiller(task, student, teacher=teacher).pairs == [(2, 4)]
    with pytest.raises(ConfigError, match=r"^distill.layers=\[1\]: the student has 2 layers and the teacher 4; give distill.layer_map"):
        HiddenStateKnowledgeDistiller(task, student, teacher=teacher, layers=[1])
    with pytest.raises(ConfigError, match=r"^distill.layer_map=\{1: 7\}: 7 is not a hidden-state index of a 4-layer model"):
        HiddenStateKnowledgeDistiller(task, student, teacher=teacher, layer_map={1: 7})
    with pytest.raises(ConfigError, match=r"^distill.layers=\[2\]: student layer 2 has no entry in distill.layer_map"):
        HiddenStateKnowledgeDistiller(task, student, teacher=teacher, layers=[2], layer_map={1: 2})


@pytest.mark.parametrize("name", ["hidden_mse", "simkd"])
def test_precomputed_features_equal_online_ones(make_config, name):
    task, data, student = _setup(make_config, "task=mrpc")
    kinds = {"hidden_mse": lambda **kw: HiddenStateKnowledgeDistiller(task, student, positions="cls", layers=[1, 2], **kw),
             "simkd": lambda **kw: ReusedClassifierKnowledgeDistiller(task, student, **kw)}
    online, stored = (_prepared(kinds[name](precompute=flag), data) for flag in (False, True))
    _drift(student)
    batch, index = _batch(data, [90, 5, 33, 61])
    # simkd keeps its head's input only where a gradient is wanted (training forwards).
    with torch.enable_grad() if name == "simkd" else torch.no_grad():
        expected = online.extra_loss(student(**batch, **online.forward_kwargs), batch, index)
        got = stored.extra_loss(student(**batch, **stored.forward_kwargs), batch, index)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0


def test_precompute_of_per_token_features_is_refused(make_config):
    task, _, student = _setup(make_config, "task=mrpc")
    with pytest.raises(ConfigError, match=r"^distill.precompute=true: per-token hidden states \(distill.positions=all\)"):
        HiddenStateKnowledgeDistiller(task, student, precompute=True)
    squad = build(make_config("task=squad").task, data_root=None, max_length=64, max_train_samples=None,
                  max_eval_samples=None, seed=0)
    with pytest.raises(ConfigError, match=r"^distill.precompute=true: simkd's teacher features are per token"):
        ReusedClassifierKnowledgeDistiller(squad, student, precompute=True)


def test_simkd_loss_and_the_reused_teacher_classifier(make_config):
    task, data, student = _setup(make_config, "task=mrpc")
    distiller = _prepared(ReusedClassifierKnowledgeDistiller(task, student, loss_weight=3.0), data)
    # Starting from the teacher's copy with P = identity, the student's head is the teacher's.
    assert torch.equal(student.classifier.weight, distiller.teacher.classifier.weight)
    assert not student.classifier.weight.requires_grad
    _drift(student)
    with torch.no_grad():
        distiller.projector.weight.add_(0.1 * torch.randn_like(distiller.projector.weight))
        distiller.projector.bias.add_(0.1)
        distiller.fold()
    batch, index = _batch(data, [7, 70, 3])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.enable_grad():
        loss = distiller.extra_loss(student(**batch), batch, index)
    with torch.no_grad():
        feature = student.bert(**inputs).pooler_output  # eval mode: the head's input, no dropout
        target = distiller.teacher.bert(**inputs).pooler_output
        projected = distiller.projector(feature)
        by_hand = 3.0 * ((projected - target) ** 2).mean()
        logits = student(**batch).logits
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5) and loss.item() > 1e-4
    # The student predicts with the teacher's classifier on projected features.
    torch.testing.assert_close(logits, distiller.teacher.classifier(projected), rtol=1e-4, atol=1e-5)


def _weight_decay_by_parameter(make_config, **train):
    """(name, weight_decay) of every parameter as the Trainer's optimizer holds it, and the model."""
    task, data, model = _setup(make_config, "task=mrpc")
    settings = TrainConfig(learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=8,
                           per_device_eval_batch_size=8, progress_bar=False, **train)
    trainer = Trainer(model, task, data, settings, Accelerator(cpu=True))
    names = {id(p): n for n, p in model.named_parameters()}
    return model, sorted((names[id(p)], group["weight_decay"]) for group in trainer.optimizer.param_groups for p in group["params"])


def test_classifier_without_weight_decay(make_config):
    model, decay = _weight_decay_by_parameter(make_config, weight_decay=0.1, no_decay_modules=("classifier",))
    # Every parameter once: matrices decayed, vectors (biases, LayerNorm) not, nor the classifier.
    assert decay == sorted((n, 0.1 if p.dim() >= 2 and not n.startswith("classifier") else 0.0)
                           for n, p in model.named_parameters())
    by_name = dict(decay)
    assert by_name["bert.encoder.layer.0.attention.self.query.weight"] == 0.1
    assert by_name["bert.encoder.layer.0.attention.output.LayerNorm.weight"] == 0.0
    assert by_name["classifier.weight"] == 0.0
    # Default: matrices decayed, the classifier's too; vectors not.
    _, default = _weight_decay_by_parameter(make_config, weight_decay=0.1)
    assert dict(default)["classifier.weight"] == 0.1 and dict(default)["classifier.bias"] == 0.0
    with pytest.raises(ConfigError, match=r"^no_decay_modules=\['clasifier'\]: 'clasifier' matches no module"):
        _weight_decay_by_parameter(make_config, weight_decay=0.1, no_decay_modules=("clasifier",))
    with pytest.raises(ConfigError, match=r"^no_decay_modules=\['\('\]: '\(' is not a regular expression"):
        _weight_decay_by_parameter(make_config, weight_decay=0.1, no_decay_modules=("(",))


def _tiny_run(make_config, build_distiller, *observers, **train):
    """One epoch of 5 optimizer steps on 40 tiny SST-2 sentences; records each micro-batch's task
    loss and distillation term as the loop computed them. ``observers``: more callbacks, after the
    distiller. Returns the model, distiller, records, final evaluation, data and trainer."""
    cfg = make_config("task=sst2")
    task = build(cfg.task, data_root=cfg.data_root, max_length=32, max_train_samples=40, max_eval_samples=16, seed=0)
    data = task.load(character_tokenizer())
    torch.manual_seed(0)
    model = TinyBert().load_model(task.auto_model_class(), **task.model_kwargs())
    distiller = build_distiller(task, model)
    settings = {**dict(learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=8,
                       per_device_eval_batch_size=8, progress_bar=False), **train}
    trainer = Trainer(model, task, data, TrainConfig(**settings), Accelerator(cpu=True), callbacks=[distiller])
    records = []
    original = distiller.extra_loss

    def recording(outputs, batch, example_index):
        value = original(outputs, batch, example_index)
        records.append((outputs.loss.item(), value.item()))
        return value

    distiller.extra_loss = recording
    final = trainer.fit(callbacks=[distiller, *observers])
    return model, distiller, records, final, data, trainer


def _accuracy_by_hand(model, data) -> float:
    """The trained model's eval accuracy recomputed outside the loop: argmax against each label."""
    batch = data.collator([data.eval[i] for i in range(len(data.eval))])
    labels = batch.pop("labels")
    with torch.no_grad():
        predicted = model.eval()(**batch).logits.argmax(-1)
    return (predicted == labels).double().mean().item()


@pytest.mark.parametrize(
    ("name", "make", "replaced"),
    [
        ("kd", lambda task, model: KnowledgeDistiller(task, model), False),
        ("kd-replace", lambda task, model: KnowledgeDistiller(task, model, replace_task_loss=True), True),
        ("hidden_mse", lambda task, model: HiddenStateKnowledgeDistiller(task, model, loss_weight=5.0), True),
        ("hidden_mse-add", lambda task, model: HiddenStateKnowledgeDistiller(task, model, replace_task_loss=False), False),
        ("simkd", lambda task, model: ReusedClassifierKnowledgeDistiller(task, model), True),
    ],
)
def test_each_option_trains_through_the_loop(make_config, name, make, replaced):
    model, distiller, records, final, data, _ = _tiny_run(make_config, make)
    assert len(records) == 5
    # The loop's loss is the distillation term alone when it replaces the task loss, else the sum.
    expected = [extra if replaced else task + extra for task, extra in records]
    assert final.metrics["train/loss"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert records[-1][1] > 0  # the student has moved away from its teacher
    assert final.metrics["eval/accuracy"] == pytest.approx(_accuracy_by_hand(model, data))


def test_simkd_run_leaves_a_stock_model_predicting_with_the_reused_classifier(make_config, tmp_path):
    model, distiller, _, final, _, trainer = _tiny_run(
        make_config, lambda task, m: ReusedClassifierKnowledgeDistiller(task, m), adam_betas=(0.9, 0.9))
    projector = distiller.projector
    assert not torch.equal(projector.weight, torch.eye(projector.weight.shape[0]))  # P was trained
    torch.testing.assert_close(model.classifier.weight, distiller.teacher.classifier.weight @ projector.weight)
    torch.testing.assert_close(model.classifier.bias,
                               distiller.teacher.classifier.weight @ projector.bias + distiller.teacher.classifier.bias)
    assert _projector_group(trainer, distiller)["betas"] == (0.9, 0.9)
    model.save_pretrained(tmp_path / "model")
    reloaded = type(model).from_pretrained(tmp_path / "model")
    assert set(reloaded.state_dict()) == set(model.state_dict())
    state = distiller.state_dict()
    fresh = ReusedClassifierKnowledgeDistiller(distiller.task, reloaded)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.projector.weight, projector.weight)
    # The distiller's own state is P's weights alone: P's AdamW state is the trainer's optimizer's.
    assert list(state) == ["projector"]
    torch.testing.assert_close(fresh.state_dict(), state)


def test_hidden_mse_run_leaves_the_task_head_as_the_teacher_s(make_config):
    model, distiller, _, _, _, _ = _tiny_run(make_config, lambda task, m: HiddenStateKnowledgeDistiller(task, m),
                                          weight_decay=0.1, no_decay_modules=("classifier",))
    assert torch.equal(model.classifier.weight, distiller.teacher.classifier.weight)
    assert torch.equal(model.bert.pooler.dense.weight, distiller.teacher.bert.pooler.dense.weight)
    assert not torch.equal(model.bert.encoder.layer[1].output.dense.weight,
                           distiller.teacher.bert.encoder.layer[1].output.dense.weight)


def test_simkd_projects_a_narrower_student_onto_a_wider_teacher(make_config, tmp_path):
    task, data, student = _setup(make_config, "task=mrpc")
    torch.manual_seed(4)
    TinyBert(hidden_size=96, intermediate_size=384).load_model(
        task.auto_model_class(), **task.model_kwargs()).save_pretrained(tmp_path / "wide")
    distiller = _prepared(ReusedClassifierKnowledgeDistiller(task, student, teacher=str(tmp_path / "wide")), data)
    assert tuple(distiller.projector.weight.shape) == (96, 64)
    batch, index = _batch(data, [4, 8])
    with torch.enable_grad():
        loss = distiller.extra_loss(student(**batch), batch, index)
    loss.backward()
    assert distiller.projector.weight.grad is not None and student.classifier.weight.grad is None
    with torch.no_grad():
        feature = student.bert(**{k: v for k, v in batch.items() if k != "labels"}).pooler_output
        torch.testing.assert_close(student(**batch).logits, distiller.teacher.classifier(distiller.projector(feature)))
    # Hidden states of different widths cannot be compared by MSE.
    with pytest.raises(ConfigError, match=r"^distill=hidden_mse: the student's hidden size 64 differs from the teacher's 96"):
        HiddenStateKnowledgeDistiller(task, student, teacher=str(tmp_path / "wide"))


def _projector_group(trainer, distiller) -> dict:
    """The trainer's optimizer group holding the projector's parameters (by identity)."""
    projector = {id(p) for p in distiller.projector.parameters()}
    groups = [g for g in trainer.optimizer.param_groups if {id(p) for p in g["params"]} & projector]
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == projector
    return groups[0]


class _Recorder:
    """A callback that records, after clipping and before each optimizer step, the gradient norms of
    the model and of the projector, and the learning rate of each optimizer group."""

    def __init__(self):
        self.trainer, self.steps = None, []

    def on_fit_start(self, trainer):
        self.trainer = trainer

    def on_before_optimizer_step(self):
        def norm(parameters):
            norms = [p.grad.norm() for p in parameters if p.grad is not None]
            return torch.linalg.vector_norm(torch.stack(norms)).item()

        trainer = self.trainer
        self.steps.append({"model": norm(trainer.model.parameters()), "projector": norm(trainer.callback_parameters),
                           "lr": [g["lr"] for g in trainer.optimizer.param_groups]})


def _simkd(task, model):
    return ReusedClassifierKnowledgeDistiller(task, model)


def test_simkd_projector_trains_in_the_trainer_s_optimizer_under_its_lr_schedule(make_config):
    recorder = _Recorder()
    _, distiller, _, _, _, trainer = _tiny_run(make_config, _simkd, recorder)
    group = _projector_group(trainer, distiller)
    assert group["name"] == "distill.projector" and group["weight_decay"] == 0.0
    # Every group follows the linear schedule: 1e-3 * (1 - step / 5) at steps 0..4.
    assert [step["lr"] for step in recorder.steps] == [[pytest.approx(1e-3 * (1 - k / 5))] * 3 for k in range(5)]
    assert not torch.equal(distiller.projector.weight, torch.eye(64))
    # At learning rate 0 the schedule gives 0 to every group: P (and so the head) does not move.
    _, frozen, _, _, _, _ = _tiny_run(make_config, _simkd, learning_rate=0.0)
    assert torch.equal(frozen.projector.weight, torch.eye(64)) and torch.equal(frozen.projector.bias, torch.zeros(64))
    assert torch.equal(frozen.head.weight, frozen.teacher_head.weight)


def test_max_grad_norm_clips_model_and_projector_together(make_config):
    recorder = _Recorder()
    _tiny_run(make_config, _simkd, recorder, max_grad_norm=0.01)
    for step in recorder.steps:
        joint = math.hypot(step["model"], step["projector"])
        # One norm over both, clipped to 0.01: the model's share alone is below it.
        assert joint == pytest.approx(0.01, rel=1e-4)
        assert step["projector"] > 1e-4 and step["model"] < 0.01 * (1 - 1e-4)


def test_a_callback_with_parameters_must_be_given_to_the_trainer(make_config):
    task, data, model = _setup(make_config, "task=mrpc")
    distiller = ReusedClassifierKnowledgeDistiller(task, model)
    settings = TrainConfig(learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=8,
                           per_device_eval_batch_size=8, progress_bar=False)
    trainer = Trainer(model, task, data, settings, Accelerator(cpu=True))
    with pytest.raises(ValueError, match=r"^callbacks \['ReusedClassifierKnowledgeDistiller'\] declare parameter_groups"):
        trainer.fit(callbacks=[distiller])
