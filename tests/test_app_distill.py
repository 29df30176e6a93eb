"""Knowledge distillation: the loss by hand, and precomputed teacher logits equal to online ones
under any batch order and padding (sentence-level GLUE logits and per-token SQuAD logits)."""
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
