"""Data parallel for real: ``torchrun --nproc_per_node 2`` on CPU (gloo) shards the data, keeps one
set of masks, evaluates on predictions gathered from both processes and writes every output once;
simkd's projector, a callback's parameter outside the DDP-wrapped model, ends the same on both."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from prunelab.app.config import build
from prunelab.models import character_tokenizer
from prunelab.train.evaluation import predict

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


@pytest.fixture(scope="module")
def two_process_run(tiny_data_root, tmp_path_factory):
    """SST-2 (tiny): 96 training examples, batch 8 per process, 2 processes: 6 steps per epoch."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [TORCHRUN, "--nproc_per_node", "2", "-m", "prunelab", "model=tiny", "task=sst2",
            f"data_root={tiny_data_root}", "max_train_samples=96", "max_eval_samples=45", "max_length=32",
            "num_train_epochs=3", "per_device_train_batch_size=8", "per_device_eval_batch_size=8",
            "learning_rate=1e-3", "pattern=4x1", "target_sparsity=0.5", "progress_bar=false",
            "checkpointing_steps=epoch", f"hydra.run.dir={out}"]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_each_process_trains_on_half_the_data(two_process_run):
    out, _ = two_process_run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # One line per epoch (written once, not once per process); 96 / (8 x 2) = 6 steps per epoch.
    assert [(line["epoch"], line["step"]) for line in lines] == [(0, 6), (1, 12), (2, 18)]
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000012", "step-00000018"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-00000018").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]


def test_outputs_are_written_once_and_the_model_loads(two_process_run):
    out, result = two_process_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert result.stdout.count("prunelab: sst2 / tiny") == 1  # one closing line, from process 0
    assert not list(out.glob("*.tmp")) and not (out / "model.tmp").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    zeros = sum(int((model.get_submodule(name).weight == 0).sum()) for name in summary["sparsity"]["ops"])
    assert zeros == sum(op["zeros"] for op in summary["sparsity"]["ops"].values())
    assert summary["sparsity"]["pruned_ops_sparsity"] == pytest.approx(0.5, abs=0.005)


def test_metrics_come_from_all_eval_examples(two_process_run, make_config):
    """The saved model, evaluated here in one process on all 45 dev sentences, scores exactly what
    the two processes reported from their gathered predictions (45 is odd: nothing may be lost or
    counted twice at the shard boundary)."""
    out, _ = two_process_run
    summary = json.loads((out / "summary.json").read_text())
    cfg = make_config("task=sst2", "max_eval_samples=45")
    task = build(cfg.task, data_root=cfg.data_root, max_length=32, max_train_samples=8, max_eval_samples=45, seed=42)
    data = task.load(character_tokenizer())
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    loader = torch.utils.data.DataLoader(data.eval, batch_size=8, collate_fn=data.collator)
    logits, _ = predict(model, loader, task, device="cpu")
    assert len(logits[0]) == 45
    assert task.compute_metrics(logits, data)["accuracy"] == summary["metrics"]["eval/accuracy"]


@pytest.mark.slow
def test_submitit_tasks_of_one_job_train_as_one_data_parallel_run(tiny_data_root, tmp_path):
    """hydra/launcher=submitit_local with 2 tasks: the code path of a SLURM job with several tasks."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="the launchers extra (pip install -e '.[launchers]') is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "prunelab", "-m", "model=tiny", "task=sst2", f"data_root={tiny_data_root}",
            "max_train_samples=96", "max_eval_samples=16", "max_length=32", "num_train_epochs=1",
            "per_device_train_batch_size=8", "progress_bar=false", "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "0" / "metrics.jsonl").read_text().splitlines()]
    assert [(line["epoch"], line["step"]) for line in lines] == [(0, 6)]  # 96 / (8 x 2 tasks)
    assert json.loads((tmp_path / "0" / "summary.json").read_text())["status"] == "completed"


# One epoch of simkd on 96 SST-2 sentences without dropout, the student moved off its teacher: the
# global batch is argv[3] sentences per process times the processes; each process saves its projector.
SIMKD_SCRIPT = """
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from prunelab.app.config import build
from prunelab.models import TinyBert, character_tokenizer
from prunelab.train.feature_distillation import ReusedClassifierKnowledgeDistiller
from prunelab.train.loop import Trainer, TrainConfig

out, data_root, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
task = build(OmegaConf.load(out / "task.yaml"), data_root=data_root, max_length=32, max_train_samples=96,
             max_eval_samples=16, seed=0)
data = task.load(character_tokenizer())
torch.manual_seed(0)
model = TinyBert().load_model(task.auto_model_class(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              **task.model_kwargs())
distiller = ReusedClassifierKnowledgeDistiller(task, model)
torch.manual_seed(1)
with torch.no_grad():  # away from its teacher (a copy), so that the loss and P's gradients are not zero
    for parameter in model.bert.parameters():
        parameter.add_(0.2 * torch.randn_like(parameter))
accelerator = Accelerator(cpu=True)
settings = TrainConfig(learning_rate=1e-2, num_train_epochs=1, per_device_train_batch_size=batch,
                       per_device_eval_batch_size=8, progress_bar=False)
Trainer(model, task, data, settings, accelerator, callbacks=[distiller]).fit(callbacks=[distiller])
torch.save(distiller.projector.state_dict(),
           out / f"projector-{accelerator.num_processes}-{accelerator.process_index}.pt")
"""


def test_simkd_projector_is_averaged_across_processes(tiny_data_root, make_config, tmp_path):
    """Two processes of 8 sentences per step end with bit-identical projectors, equal (to float
    rounding) to one process of 16: the projector's gradients are averaged as the model's are."""
    (tmp_path / "task.yaml").write_text(OmegaConf.to_yaml(make_config("task=sst2").task))
    script = tmp_path / "simkd.py"
    script.write_text(SIMKD_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for launcher, batch in (([TORCHRUN, "--nproc_per_node", "2"], "8"), ([sys.executable], "16")):
        result = subprocess.run([*launcher, str(script), str(tmp_path), str(tiny_data_root), batch], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
    first, second, alone = (torch.load(tmp_path / f"projector-{name}.pt") for name in ("2-0", "2-1", "1-0"))
    assert not torch.equal(first["weight"], torch.eye(64))  # trained
    for name in ("weight", "bias"):
        assert torch.equal(first[name], second[name]), name
        torch.testing.assert_close(first[name], alone[name], rtol=0, atol=1e-4)
