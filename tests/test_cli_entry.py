"""The command line (``python -m prunelab``): every config mistake is one ``prunelab: error:`` line
with exit code 2, user config folders are searched, and a sweep with a failing job goes on and ends
with one line counting the failures (exit code 2)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from prunelab.__main__ import hydra_error_line

from conftest import one_line, run_cli

TINY = ["model=tiny", "task=sst2", "max_train_samples=32", "max_eval_samples=16", "max_length=32",
        "num_train_epochs=1", "per_device_train_batch_size=8", "progress_bar=false", "save_model=false"]
RECIPE = """\
# @package _global_
defaults:
  - override /pattern: 1x1
seed: 7
max_train_samples: 24
"""


@pytest.fixture
def user_conf(tmp_path) -> Path:
    """A user's own config folder holding experiment/my-recipe.yaml."""
    folder = tmp_path / "my-conf"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "my-recipe.yaml").write_text(RECIPE, encoding="utf-8")
    return folder


def _compose_error(*overrides: str) -> Exception:
    with initialize_config_module("prunelab.conf", version_base="1.3"):
        with pytest.raises(Exception) as caught:
            compose("config", overrides=list(overrides))
    return caught.value


@pytest.mark.parametrize("overrides, line", [
    (["lerning_rate=1"],
     "lerning_rate=1: no such key in the config (did you mean learning_rate? see conf/config.yaml, or prunelab --cfg job)"),
    (["pruning.pruning_scop=local"], "pruning.pruning_scop=local: no such key in the config (did you mean pruning.pruning_scope?"),
    (["hydra.job.chdri=true"], "hydra.job.chdri=true: no such key in Hydra config (did you mean hydra.job.chdir?"),
    (["seed=[1"], "seed=[1: bad override syntax: no viable alternative at input '[1' (see https://hydra.cc/"),
    (["target_sparsity"], "target_sparsity: bad override syntax: expected key=value (see https://hydra.cc/"),
    (["task=sst3"], "task=sst3: no such option in group 'task'; available: clm, cola, mnli, "),
    (["hydra/launcher=nope"], "hydra/launcher=nope: no such option in group 'hydra/launcher'; available: basic, "),
])
def test_hydra_errors_become_one_line_naming_the_override(overrides, line):
    message = hydra_error_line(_compose_error(*overrides), overrides)
    assert message.startswith(line)
    assert "\n" not in message


def test_an_option_missing_from_a_preset_names_the_preset(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "broken.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /pattern: 3x3\n", encoding="utf-8")
    overrides = [f"hydra.searchpath=[file://{tmp_path}]", "experiment=broken"]
    message = hydra_error_line(_compose_error(*overrides), overrides)
    assert message.startswith("pattern=3x3 (chosen in a config file): no such option in group 'pattern'; available: ")


def test_cli_help_says_what_prunelab_is_and_lists_the_groups():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("prunelab: prune a transformer while it is fine-tuned")
    assert "\npattern: 1:4, 1x1, " in result.stdout and "\ndistill: hidden_mse, kd, layerwise, none, simkd\n" in result.stdout
    assert result.stdout.rstrip().endswith("docs/ the details (sweeps, quantization, compaction).")


def test_cli_unknown_key_isone_line(tmp_path):
    line = one_line(run_cli("model=tiny", "foo=1", f"hydra.run.dir={tmp_path / 'run'}"))
    assert line == "prunelab: error: foo=1: no such key in the config (see conf/config.yaml, or prunelab --cfg job)"
    assert not (tmp_path / "run").exists()  # nothing ran


def test_cli_unknown_group_option_is_one_line_with_the_options(tmp_path):
    line = one_line(run_cli("model=tiny", "experiment=my-recipe", f"hydra.run.dir={tmp_path / 'run'}"))
    assert line.startswith("prunelab: error: experiment=my-recipe: no such option in group 'experiment'; available: ")
    assert "demo" in line.split("available: ")[1].split(", ")


def test_cli_a_pattern_for_dense_runs_only_is_refused_but_a_sweeps_dense_job_takes_it(tiny_data_root, tmp_path):
    refusal = ("prunelab: error: pattern=2:4: has no effect with do_prune=false (a dense run); "
               "drop it, or set do_prune=true")
    assert one_line(run_cli("model=tiny", "do_prune=false", "pattern=2:4", f"hydra.run.dir={tmp_path / 'run'}")) == refusal
    sweep = tmp_path / "sweep"
    every_job_dense = run_cli("-m", *TINY, f"data_root={tiny_data_root}", "do_prune=false", "pattern=2:4",
                           f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert one_line(every_job_dense) == refusal and not sweep.exists()  # refused before any job
    # With do_prune swept, the pattern axis reaches the dense jobs too; docs/sweeps.md.
    result = run_cli("-m", *TINY, f"data_root={tiny_data_root}", "do_prune=false,true", "pattern=2:4",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    dense, pruned = (json.loads((sweep / str(num) / "summary.json").read_text()) for num in (0, 1))
    assert dense["status"] == "completed" and dense["do_prune"] is False and dense["pattern"] is None
    assert pruned["status"] == "completed" and pruned["pattern"] == "2:4"


def test_cli_finds_a_recipe_in_a_user_config_folder(user_conf, tmp_path):
    for where in (["--config-dir", str(user_conf)], [f"hydra.searchpath=[file://{user_conf}]"]):
        result = run_cli(*where, "model=tiny", "experiment=my-recipe", "--cfg", "job", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "seed: 7\n" in result.stdout and "max_train_samples: 24\n" in result.stdout
        assert "pattern: 1x1\n" in result.stdout


def test_cli_sweep_goes_on_past_a_failing_job_and_counts_failures(tiny_data_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *TINY, f"data_root={tiny_data_root}", "pattern=4x1,2:4", "target_sparsity=0.8",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"prunelab: 1 of 2 jobs failed (their summary.json has the error); sweep dir: {sweep}"
    [job_line] = [line for line in lines if line.startswith("prunelab: error: job 1 (")]
    assert "pattern=2:4 target_sparsity=0.8): " in job_line and "target_sparsity=0.8" in job_line.split("): ", 1)[1]
    assert "Traceback" not in result.stderr
    good, bad = (json.loads((sweep / str(num) / "summary.json").read_text()) for num in (0, 1))
    assert good["status"] == "completed" and good["pattern"] == "4x1"
    assert bad["status"] == "failed" and bad["error"].startswith("ConfigError: ")


def _job_dir(sweep: Path, num: int, status: str | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n", encoding="utf-8")
    if status is not None:
        (job / "summary.json").write_text(json.dumps({"status": status, "error": None}), encoding="utf-8")


def _sweep_outcome(sweep: Path, before=(), during=()):
    """Jobs ``before`` the sweep started (an earlier sweep in the same dir) and ``during`` it."""
    from omegaconf import OmegaConf

    from prunelab.app import sweep_failures

    for num, status in before:
        _job_dir(sweep, num, status)
    sweep_failures.RecordSweep().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    for num, status in during:
        _job_dir(sweep, num, status)
    return sweep_failures.take_outcome()


def test_sweep_outcome_all_completed_says_nothing(tmp_path):
    outcome = _sweep_outcome(tmp_path / "s", during=[(0, "completed"), (1, "completed")])
    assert (outcome.jobs, outcome.failed, outcome.line) == (2, 0, None)


def test_sweep_outcome_counts_only_this_sweeps_jobs(tmp_path):
    sweep = tmp_path / "s"
    outcome = _sweep_outcome(sweep, before=[(5, "failed")], during=[(0, "completed"), (1, "failed")])
    assert outcome.line == f"prunelab: 1 of 2 jobs failed (their summary.json has the error); sweep dir: {sweep}"


def test_sweep_outcome_job_without_summary_points_at_the_report(tmp_path):
    sweep = tmp_path / "s"
    outcome = _sweep_outcome(sweep, during=[(0, "completed"), (1, None), (2, "running")])
    assert outcome.line == f"prunelab: 2 of 3 jobs failed (see the lines above, or python -m prunelab.report {sweep})"


def test_sweep_outcome_an_earlier_runs_summary_is_no_success(tmp_path):
    from omegaconf import OmegaConf

    from prunelab.app import sweep_failures

    sweep = tmp_path / "s"
    _job_dir(sweep, 0, "completed")  # an earlier sweep's job 0, completed
    sweep_failures.RecordSweep().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    overrides = sweep / "0" / ".hydra" / "overrides.yaml"  # this sweep's job 0: Hydra rewrites its
    overrides.write_text("- seed=0\n- foo=1\n", encoding="utf-8")  # overrides, the run wrote nothing
    outcome = sweep_failures.take_outcome()
    assert (outcome.jobs, outcome.failed, outcome.all_summarised) == (1, 1, False)
