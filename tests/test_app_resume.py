"""Checkpoints and exact resume: a real run killed (SIGKILL, SIGTERM) and resumed from its
checkpoint ends bit-identical to an uninterrupted run: weights, masks, metrics; with distill=simkd
too, whose projector trains in the trainer's optimizer (a checkpoint from before is refused)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# 96 examples / batch 8 = 12 optimizer steps per epoch, 4 epochs; 4x1 pruning over epochs 1-3;
# checkpoints every 5 steps (mid-epoch) so a kill lands between a checkpoint and an epoch's end.
RUN = [
    "model=tiny", "task=sst2", "max_train_samples=96", "max_eval_samples=32", "max_length=64",
    "num_train_epochs=4", "per_device_train_batch_size=8", "learning_rate=1e-3", "sparsity_warm_epochs=1",
    "pattern=4x1", "target_sparsity=0.5", "distill=kd", "progress_bar=false", "checkpointing_steps=5",
    "checkpoints_to_keep=50",
]


# The same run distilled with simkd: its projector (folded into the saved classifier) and the
# projector's AdamW state must resume exactly too.
SIMKD = "distill=simkd"


def _start(run_dir: Path, data_root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = [arg for arg in RUN if not (SIMKD in extra and arg.startswith("distill="))]
    if "checkpointing_steps=null" in extra:  # no checkpoints: keeping some would be an inert key (refused)
        run = [arg for arg in run if not arg.startswith(("checkpointing_steps=", "checkpoints_to_keep="))]
    args = [sys.executable, "-m", "prunelab", *run, f"data_root={data_root}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _kill_after_first_checkpoint(process: subprocess.Popen, run_dir: Path, signum: int, pid: int | None = None) -> None:
    """``signum`` to ``pid`` (default: ``process``) once ``run_dir`` holds its first checkpoint."""
    first = run_dir / "checkpoints" / "step-00000005"
    deadline = time.monotonic() + 240
    while not first.is_dir():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.01)
    os.kill(pid or process.pid, signum)


def _outputs(run_dir: Path) -> tuple[dict, list[dict], dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in metrics:
        assert line.pop("pruning_s") >= 0  # a time, the one field a resumed run cannot reproduce
    return summary, metrics, load_file(run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = _finish(_start(run_dir, tiny_data_root))
    assert result.returncode == 0, result.stderr
    return _outputs(run_dir)


def _assert_identical(resumed: tuple, uninterrupted: tuple) -> None:
    summary, metrics, weights = resumed
    expected_summary, expected_metrics, expected_weights = uninterrupted
    assert summary["status"] == "completed"
    assert metrics == expected_metrics  # every epoch's eval metrics, train loss and sparsity, exactly
    assert summary["metrics"] == expected_summary["metrics"]
    assert summary["sparsity"] == expected_summary["sparsity"]  # the same zeros in every op
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        assert tensor.equal(expected_weights[name]), name  # bit-identical weights (masks included)


def test_hard_kill_then_resume_is_bit_identical(uninterrupted, tiny_data_root, tmp_path):
    process = _start(tmp_path, tiny_data_root)
    _kill_after_first_checkpoint(process, tmp_path, signal.SIGKILL)
    process.wait(timeout=60)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"  # killed hard mid-run
    assert not (tmp_path / "model").exists()

    result = _finish(_start(tmp_path, tiny_data_root, f"resume_from_checkpoint={tmp_path}"))
    assert result.returncode == 0, result.stderr
    _assert_identical(_outputs(tmp_path), uninterrupted)
    assert json.loads((tmp_path / "summary.json").read_text())["notes"][0].startswith("resumed from ")


def test_sigterm_checkpoints_marks_preempted_and_resumes_identically(uninterrupted, tiny_data_root, tmp_path):
    process = _start(tmp_path, tiny_data_root)
    _kill_after_first_checkpoint(process, tmp_path, signal.SIGTERM)
    result = _finish(process)
    assert result.returncode == 128 + signal.SIGTERM
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted"
    assert summary["error"].startswith("SIGTERM received: stopped at step ")
    assert result.stderr.strip().splitlines()[-1] == f"prunelab: {summary['error']}"
    stopped_at = int(summary["error"].split()[5])
    newest = sorted((tmp_path / "checkpoints").iterdir())[-1]
    assert newest.name == f"step-{stopped_at:08d}"  # the checkpoint of the step the signal ended

    result = _finish(_start(tmp_path, tiny_data_root, "resume_from_checkpoint=auto"))
    assert result.returncode == 0, result.stderr
    _assert_identical(_outputs(tmp_path), uninterrupted)


def test_a_run_dir_holding_a_run_is_refused_and_kept(uninterrupted, tiny_data_root, tmp_path):
    first = _finish(_start(tmp_path, tiny_data_root, "num_train_epochs=2", "checkpointing_steps=null"))
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "summary.json").read_text()
    again = _finish(_start(tmp_path, tiny_data_root, "num_train_epochs=2", "checkpointing_steps=null"))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith(f"prunelab: error: output directory {tmp_path} holds a previous run")
    assert (tmp_path / "summary.json").read_text() == before  # nothing of the first run lost

    changed = _finish(_start(tmp_path, tiny_data_root, "resume_from_checkpoint=auto", "learning_rate=0.5"))
    assert changed.returncode == 0  # the run is complete: auto says so and rewrites nothing
    assert (tmp_path / "summary.json").read_text() == before


def test_resume_with_other_settings_is_refused(tiny_data_root, tmp_path):
    first = _start(tmp_path, tiny_data_root)
    _kill_after_first_checkpoint(first, tmp_path, signal.SIGKILL)
    first.wait(timeout=60)
    result = _finish(_start(tmp_path, tiny_data_root, f"resume_from_checkpoint={tmp_path}", "learning_rate=0.5"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"prunelab: error: resume_from_checkpoint={tmp_path}: learning_rate was 0.001 in the checkpointed run "
        "and is 0.5 now; resume with the run's own settings"
    )


def _submitit_job_pid(sweep: Path) -> int:
    """The process running the sweep's job under submitit's local executor (Linux /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if b"submitit.core._submit" in args and any(str(sweep).encode() in arg for arg in args):
            return int(cmdline.parent.name)
    raise AssertionError(f"no submitit job process for {sweep}")


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job process through /proc")
def test_submitit_preemption_checkpoints_requeues_and_resumes_identically(uninterrupted, tiny_data_root, tmp_path):
    """Hydra's submitit launcher (local executor: the same job pickling, signal and requeue code as
    on SLURM): its preemption signal stops the run at a checkpoint, submitit requeues the job and
    the requeued job, in the same job dir, resumes and ends as if never stopped."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="the launchers extra (pip install -e '.[launchers]') is not installed")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "prunelab", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", *RUN,
            f"data_root={tiny_data_root}", "resume_from_checkpoint=auto"]
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = sweep / "0"
    deadline = time.monotonic() + 240
    while not (job / "checkpoints").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    _kill_after_first_checkpoint(process, job, signal.SIGUSR2, pid=_submitit_job_pid(sweep))
    result = _finish(process)
    assert result.returncode == 0, result.stderr
    log = "\n".join(path.read_text() for path in (sweep / ".submitit").glob("*/*_log.err"))
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
    summary = json.loads((job / "summary.json").read_text())
    assert summary["notes"][0].startswith(f"resumed from {job / 'checkpoints'}")  # the requeued attempt
    _assert_identical(_outputs(job), uninterrupted)



def test_simkd_kill_then_resume_is_bit_identical_and_an_older_checkpoint_is_refused(tiny_data_root, tmp_path):
    expected_dir = tmp_path / "uninterrupted"
    result = _finish(_start(expected_dir, tiny_data_root, SIMKD))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "killed"
    process = _start(run_dir, tiny_data_root, SIMKD)
    _kill_after_first_checkpoint(process, run_dir, signal.SIGKILL)
    process.wait(timeout=60)
    checkpoint = run_dir / "checkpoints" / "step-00000005"
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["parameter_groups"] == ["distill.projector"]

    # As written before the projector joined the trainer's optimizer: no callback groups recorded.
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k != "parameter_groups"}))
    refused = _finish(_start(run_dir, tiny_data_root, SIMKD, f"resume_from_checkpoint={checkpoint}"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"prunelab: error: resume_from_checkpoint={checkpoint}: its optimizer trained the callback parameter "
        "groups [], this run's trains ['distill.projector'] (a distill=simkd checkpoint written before its "
        "projector joined the trainer's optimizer cannot be resumed); start the run again"
    )

    state_file.write_text(json.dumps(state))
    result = _finish(_start(run_dir, tiny_data_root, SIMKD, f"resume_from_checkpoint={checkpoint}"))
    assert result.returncode == 0, result.stderr
    _assert_identical(_outputs(run_dir), _outputs(expected_dir))
