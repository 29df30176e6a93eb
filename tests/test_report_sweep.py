"""Real sweeps of the tiny model through ``python -m prunelab -m``, then ``python -m prunelab.report``
on them; the submitit_local and joblib launcher runs (~30-50 s each) are marked slow; the table
presets' grids and the SLURM launcher are checked by composing them."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prunelab.app.config import register_resolvers
from prunelab.report import build_report
from prunelab.report.jobs import COMPLETED, FAILED
from prunelab.report.sweep_plan import expected_jobs

REPO = Path(__file__).resolve().parents[1]
# A few optimizer steps of the tiny BERT; no model saved (the report needs only summary.json)
TINY_RUN = ["model=tiny", "num_train_epochs=1", "max_train_samples=32", "max_eval_samples=16", "max_length=32",
            "per_device_train_batch_size=8", "progress_bar=false", "save_model=false"]


def sweep(sweep_dir: Path, data_root: Path, *overrides: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    # one intra-op thread per job: the test machines' cores are shared, and parallel launchers
    # would otherwise oversubscribe them
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "prunelab", "-m", *TINY_RUN, f"data_root={data_root}", *overrides,
               f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == expect_ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture
def launchers():
    """The optional launcher plugins these tests exercise (pyproject extra ``launchers``)."""
    missing = [name for name in ("hydra_submitit_launcher", "hydra_joblib_launcher")
               if importlib.util.find_spec(f"hydra_plugins.{name}") is None]
    assert not missing, f"install the launchers extra: pip install -e '.[launchers]' (missing {missing})"


def summaries(sweep_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/summary.json"))]


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_data_root) -> Path:
    """2 patterns x 2 seeds, sparse and dense: 8 jobs, the dense ones run once per pattern; beside
    it a second sweep whose one job fails (2:4 cannot reach 0.8)."""
    root = tmp_path_factory.mktemp("grid")
    sweep(root / "multirun", tiny_data_root, "do_prune=true,false", "pattern=4x1,2:4", "seed=1,2",
          "target_sparsity=0.5")
    sweep(root / "failing", tiny_data_root, "pattern=2:4", "target_sparsity=0.8", expect_ok=False)
    return root / "multirun"


def test_grid_sweep_writes_one_completed_job_dir_each(grid: Path):
    found = summaries(grid)
    assert len(found) == 8 and {s["status"] for s in found} == {COMPLETED}
    assert [s["overrides"][-4:] for s in found[:2]] == [
        ["do_prune=True", "pattern=4x1", "seed=1", "target_sparsity=0.5"],
        ["do_prune=True", "pattern=4x1", "seed=2", "target_sparsity=0.5"]]
    assert (grid / "multirun.yaml").is_file() and len(expected_jobs(grid)) == 8


def _expected_cells(found: list[dict]) -> dict:
    """Metric lists per pattern (None: dense), one value per seed, straight from the summaries."""
    cells: dict = {}
    for s in found:
        key = s["pattern"] if s["do_prune"] else None
        cells.setdefault(key, {}).setdefault(s["seed"], s["metrics"][s["main_metric"]])
    return {key: list(by_seed.values()) for key, by_seed in cells.items()}


def test_report_cli_tabulates_the_grid(grid: Path, tmp_path: Path):
    out = tmp_path / "report"
    failing = grid.parent / "failing"
    done = subprocess.run([sys.executable, "-m", "prunelab.report", str(grid), str(failing), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out / 'results.md'}" in done.stdout and "9 jobs: 8 completed, 1 failed" in done.stdout
    expected = _expected_cells(summaries(grid))
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["model"], row["task"], row["pattern"], row["target_sparsity"]) for row in rows] == [
        ("tiny", "mrpc", "4x1", "0.5"), ("tiny", "mrpc", "2:4", "0.5"), ("tiny", "mrpc", "2:4", "0.8")]
    assert (rows[2]["sparse_n"], rows[2]["sparse_not_completed"], rows[2]["dense_n"]) == ("0", "1 failed", "2")
    dense = expected[None]
    for row in rows[:2]:
        sparse = expected[row["pattern"]]
        assert (row["sparse_n"], row["dense_n"], row["dense_seeds"]) == ("2", "2", "1 2")
        assert float(row["sparse_mean"]) == pytest.approx(sum(sparse) / 2, abs=1e-6)
        assert float(row["sparse_best"]) == pytest.approx(max(sparse), abs=1e-6)
        assert float(row["dense_mean"]) == pytest.approx(sum(dense) / 2, abs=1e-6)
        assert float(row["dense_best"]) == pytest.approx(max(dense), abs=1e-6)
        assert float(row["pruned_ops_sparsity"]) == pytest.approx(0.5, abs=0.01)
        assert 0.3 < float(row["linear_conv_sparsity"]) < 0.5  # excluded pooler/classifier stay dense
    text = (out / "results.md").read_text()
    assert "| Model | Dataset | Sparsity pattern | Element-wise/matmul, Gemm, conv ratio |" in text
    assert text.count("| tiny | mrpc |") == 3 and "## Duplicate seeds not counted" in text
    assert "| tiny | mrpc | 2:4 | n/a (target 0.8) |" in text and "| no completed run (1 failed) | — |" in text
    problems = text.split("## Failed, running and missing jobs")[1]
    assert f"| failed | `{failing / '0'}` |" in problems
    assert "ConfigError: pruning: target_sparsity=0.8 is above 2/4=0.5" in problems
    pngs = sorted(path.name for path in out.glob("*.png"))
    assert pngs == ["metric_vs_sparsity_tiny_mrpc.png", "op_sparsity_tiny_mrpc_2-4_0.5.png",
                    "op_sparsity_tiny_mrpc_4x1_0.5.png"]
    assert all((out / name).stat().st_size > 5000 for name in pngs)


@pytest.mark.slow
def test_submitit_local_sweep_reports_its_failed_job(tmp_path: Path, tiny_data_root: Path, launchers):
    """The submitit code path a SLURM cluster uses, run locally; 2:4 cannot reach 0.8, so job 1 fails."""
    sweep_dir = tmp_path / "submitit"
    sweep(sweep_dir, tiny_data_root, "pattern=4x1,2:4", "target_sparsity=0.8", "hydra/launcher=submitit_local",
          expect_ok=False)
    assert (sweep_dir / ".submitit").is_dir()
    report = build_report([sweep_dir], plots=False)
    assert [job.status for job in report.jobs] == [COMPLETED, FAILED]
    assert "target_sparsity=0.8 is above 2/4=0.5" in report.jobs[1].error
    text = report.markdown.read_text()
    assert "| tiny | mrpc | 2:4 | n/a (target 0.8) | no dense run" in text and "no completed run (1 failed)" in text
    assert f"| failed | `{sweep_dir / '1'}` |" in text


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_processes(tmp_path: Path, tiny_data_root: Path, launchers):
    sweep_dir = tmp_path / "joblib"
    sweep(sweep_dir, tiny_data_root, "seed=1,2", "target_sparsity=0.5", "hydra/launcher=joblib",
          "hydra.launcher.n_jobs=2")
    report = build_report([sweep_dir], plots=False)
    assert [job.status for job in report.jobs] == [COMPLETED, COMPLETED]
    assert report.rows[0].sparse.seeds == [1, 2]


@pytest.fixture(scope="module")
def hydra_compose():
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=list(overrides), return_hydra_config=True)


def test_submitit_slurm_launcher_composes(hydra_compose, launchers):
    cfg = hydra_compose("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                        "hydra.launcher.gpus_per_node=1")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 60)


def _plan(hydra_compose, tmp_path: Path, command_line: list[str]) -> list:
    """The jobs ``python -m prunelab -m <command_line>`` would launch, from its multirun.yaml."""
    cfg = hydra_compose(command_line[0])  # the preset; a sweep value cannot be composed on its own
    OmegaConf.update(cfg, "hydra.overrides.task", command_line)
    (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(cfg))
    return expected_jobs(tmp_path)


def _cells(hydra_compose, plan: list) -> set[tuple]:
    """(model, task, do_prune, pattern, target) of every job, composed as the job would be."""
    cells = set()
    # seeds change no composed value: compose each remaining combination once
    for overrides in {tuple(o for o in job.overrides if not o.startswith("seed=")) for job in plan}:
        cfg = hydra_compose(*overrides)
        cells.add((cfg.model.name, cfg.hydra.runtime.choices.task, cfg.do_prune,
                   cfg.pruning.pattern if cfg.do_prune else None, cfg.target_sparsity if cfg.do_prune else None))
    return cells


def _table(models: list[str], tasks: list[str], target_4x1: float) -> set[tuple]:
    return {(model, task, *arm) for model in models for task in tasks
            for arm in ((False, None, None), (True, "4x1", target_4x1), (True, "2:4", 0.5))}


@pytest.mark.parametrize("preset, jobs, cells", [
    ("table_glue_bert_mini", 18, _table(["bert-mini"], ["mrpc", "sst2"], 0.9)),
    ("table_squad", 48, _table(["bert-mini", "distilbert", "bert-base", "bert-large"], ["squad"], 0.8)),
])
def test_table_presets_expand_to_their_grid(hydra_compose, tmp_path: Path, preset: str, jobs: int, cells: set):
    plan = _plan(hydra_compose, tmp_path, [f"experiment={preset}"])
    assert len(plan) == jobs
    assert {job.overrides[-2] for job in plan} == {"seed=1", "seed=2", "seed=3"}
    assert _cells(hydra_compose, plan) == cells


def test_glue_table_runs_each_dense_run_once_with_its_recipe(hydra_compose, tmp_path: Path):
    plan = _plan(hydra_compose, tmp_path, ["experiment=table_glue_bert_mini"])
    dense = [job for job in plan if job.overrides[0].endswith("-dense")]
    assert len(dense) == 6  # 2 tasks x 3 seeds
    mrpc_4x1 = hydra_compose(*plan[3].overrides)
    assert plan[3].overrides[:2] == ["+experiment@_global_=bert-mini-mrpc-4x1", "seed=1"]
    assert (mrpc_4x1.model.name_or_path, mrpc_4x1.num_train_epochs, mrpc_4x1.learning_rate) == (
        "M-FAC/bert-mini-finetuned-mrpc", 15, 1e-3)


def test_command_line_override_narrows_a_preset_grid(hydra_compose, tmp_path: Path):
    plan = _plan(hydra_compose, tmp_path, ["experiment=table_glue_bert_mini", "seed=7",
                                           "+experiment@_global_=bert-mini-mrpc-dense,bert-mini-mrpc-4x1"])
    assert [job.overrides[:2] for job in plan] == [
        ["+experiment@_global_=bert-mini-mrpc-dense", "seed=7"], ["+experiment@_global_=bert-mini-mrpc-4x1", "seed=7"]]
    squad = _plan(hydra_compose, tmp_path, ["experiment=table_squad", "seed=1", "model=bert-mini"])
    assert len(squad) == 4
