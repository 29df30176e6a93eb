"""The trainer's ``eval/loss``: a task's own ``loss`` metric (clm: token-weighted) is kept; without
one it is the mean of the eval batches' losses."""
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from prunelab.app.config import build
from prunelab.models import TinyBert, character_tokenizer
from prunelab.train.evaluation import predict
from prunelab.train.loop import Trainer, TrainConfig


def _trainer(make_config):
    """20 SST-2 dev sentences in eval batches of 8, 8 and 4: the mean of the three batch means
    weighs the last four sentences twice as much as the mean over sentences does."""
    cfg = make_config("task=sst2")
    task = build(cfg.task, data_root=cfg.data_root, max_length=32, max_train_samples=16, max_eval_samples=20, seed=0)
    data = task.load(character_tokenizer())
    torch.manual_seed(0)
    model = TinyBert().load_model(task.auto_model_class(), **task.model_kwargs())
    settings = TrainConfig(learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=8,
                           per_device_eval_batch_size=8, progress_bar=False)
    return Trainer(model, task, data, settings, Accelerator(cpu=True))


def test_a_task_s_own_eval_loss_is_kept(make_config):
    trainer = _trainer(make_config)
    labels = torch.tensor([trainer.data.eval[i]["labels"] for i in range(len(trainer.data.eval))])
    _, batch_mean = predict(trainer.model, trainer.eval_loader, trainer.task, trainer.accelerator)
    assert trainer.evaluate(0, 0, 0.0).metrics["eval/loss"] == pytest.approx(batch_mean, rel=1e-6)

    def per_sentence_loss(logits, data):  # what a task with a loss of its own returns
        return {"accuracy": 0.0, "loss": F.cross_entropy(torch.from_numpy(logits[0]), labels).item()}

    trainer.task.compute_metrics = per_sentence_loss
    kept = trainer.evaluate(0, 0, 0.0).metrics["eval/loss"]
    assert kept == per_sentence_loss(predict(trainer.model, trainer.eval_loader, trainer.task)[0], None)["loss"]
    assert abs(kept - batch_mean) > 1e-5
