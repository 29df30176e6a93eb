"""Defects found by probing the command lines as a new user would (issue 28): each bad input is one
line and exit code 2, whatever the entry point; nothing a run wrote is lost."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunelab.export.__main__ import main as export_main
from prunelab.report.__main__ import main as report_main

from conftest import one_line, run_cli



def _one_line_err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_prunelab_bad_option_isone_line():
    assert one_line(run_cli("--foo")) == "prunelab: error: unrecognized arguments: --foo (see prunelab --help)"


def test_export_missing_dir_and_bad_args_are_one_line_exit_2(tmp_path, capsys):
    assert export_main([str(tmp_path / "nowhere")]) == 2
    assert _one_line_err(capsys).startswith(f"prunelab.export: error: {tmp_path / 'nowhere'}: no saved model")
    assert export_main([str(tmp_path)]) == 2  # a directory without a saved model
    assert "no saved model" in _one_line_err(capsys)
    for argv in ([], [str(tmp_path), "--runs", "x"], [str(tmp_path), "--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            export_main(argv)
        assert exit_.value.code == 2
        assert _one_line_err(capsys).startswith("python -m prunelab.export: error: ")


def test_report_missing_dir_and_bad_args_are_one_line_exit_2(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert _one_line_err(capsys).startswith("python -m prunelab.report: error: sweep dir ")
    for argv in ([], [str(tmp_path), "--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            report_main(argv)
        assert exit_.value.code == 2
        assert _one_line_err(capsys).startswith("python -m prunelab.report: error: ")


@pytest.mark.parametrize("overrides, line", [
    (["save_model=false", "verify_loading=true"],
     "verify_loading=true: has no effect with save_model=false (nothing is saved to reload); "
     "drop it, or set save_model=true"),
    (["checkpoints_to_keep=3"],
     "checkpoints_to_keep=3: has no effect with checkpointing_steps=null (no checkpoints); "
     "drop it, or set checkpointing_steps=epoch|N"),
])
def test_verify_loading_and_checkpoints_to_keep_with_nothing_to_act_on_are_refused(make_config, overrides, line):
    from prunelab.app.schema import check_config, check_inert_overrides
    from prunelab.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        check_inert_overrides(check_config(make_config(*overrides)), overrides)
    assert str(refused.value) == line
    # With something to act on, the same keys are taken.
    fine = ["save_model=true", "verify_loading=true"] if "save_model=false" in overrides \
        else ["checkpointing_steps=epoch", "checkpoints_to_keep=3"]
    check_inert_overrides(check_config(make_config(*fine)), fine)


def test_command_line_target_must_be_prunelabs_unless_trusted_and_of_the_right_kind(tmp_path):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert one_line(run_cli("model=tiny", "distill=kd", "distill._target_=builtins.dict", run)) == (
        "prunelab: error: distill._target_=builtins.dict: a _target_ on the command line must name prunelab's own "
        "code; to run your own, set PRUNELAB_TRUSTED_TARGETS=builtins (comma-separated module names)")
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run dir
    trusted = run_cli("model=tiny", "distill=kd", "distill._target_=builtins.dict", run,
                   env={"PRUNELAB_TRUSTED_TARGETS": "builtins"})
    assert one_line(trusted) == ("prunelab: error: distill._target_=builtins.dict: not a distill option "
                                  "(its parameters cannot be read)")


@pytest.mark.parametrize("override, refused", [
    ("+lookup={a:{_target_: os.system}}", "lookup.a._target_=os.system"),  # inside a dict value
    ("hydra.callbacks.x._target_=os.system", "hydra.callbacks.x._target_=os.system"),  # Hydra's own
    ("model._target_=prunelab.models.TinyBert,evil.Model", "model._target_=evil.Model"),  # a sweep's values
    ("model._target_=prunelabx.Model", "model._target_=prunelabx.Model"),  # prunelab's prefix, not its package
])
def test_untrusted_targets_anywhere_on_the_command_line(override, refused):
    from prunelab.__main__ import untrusted_target

    assert untrusted_target([override], "").startswith(f"{refused}: a _target_ on the command line must name")
    assert untrusted_target(["model._target_=prunelab.models.TinyBert", "~distill._target_"], "") is None
    assert untrusted_target(["model._target_=mypkg.models.Mine", "x._target_=other.f"], "mypkg, other.") is None


@pytest.mark.parametrize("group, target, why", [
    ("distill", "prunelab.app.config", "expected a class or function"),
    ("model", "prunelab.app.config.shared_data_root", "expected a class with load_tokenizer, load_model, max_input_tokens"),
    ("distill", "prunelab.app.config.shared_data_root", "it must take student, task, which the run passes"),
    ("quant", "prunelab.models.TinyBert", "expected a class with prepare, release"),
])
def test_a_target_of_the_wrong_kind_isone_line(make_config, group, target, why):
    from prunelab.app.schema import check_config
    from prunelab.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        check_config(make_config(f"{group}._target_={target}"))
    assert str(refused.value) == f"{group}._target_={target}: not a {group} option ({why})"


def test_no_decay_modules_bad_regex_is_refused_by_the_config_check(make_config):
    from prunelab.app.schema import check_config
    from prunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^no_decay_modules=\['\('\]: '\(' is not a regular expression \("):
        check_config(make_config("no_decay_modules=['(']"))


def test_no_decay_modules_matching_no_module_is_refused_before_the_data_loads(make_config, tmp_path):
    from prunelab.app.run import run
    from prunelab.errors import ConfigError

    empty = tmp_path / "no-data"  # no glue/ files: loading the data would fail with another error
    empty.mkdir()
    cfg = make_config("no_decay_modules=[clasifier]", f"data_root={empty}")
    with pytest.raises(ConfigError) as refused:
        run(cfg, tmp_path / "run")
    assert str(refused.value) == "no_decay_modules=['clasifier']: 'clasifier' matches no module of the model"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("ConfigError: no_decay_modules=")


TINY = ["model=tiny", "task=sst2", "max_train_samples=16", "max_eval_samples=8", "max_length=16",
        "num_train_epochs=1", "per_device_train_batch_size=8", "progress_bar=false"]


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root (Hydra's own .hydra/ and log aside): its mtime and contents."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


def test_resume_auto_on_a_completed_run_says_so_and_rewrites_nothing(tiny_data_root, tmp_path):
    run_dir = tmp_path / "run"
    command = [*TINY, f"data_root={tiny_data_root}", f"hydra.run.dir={run_dir}", "checkpointing_steps=epoch"]
    first = run_cli(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _tree(run_dir)
    assert "summary.json" in before and "model/config.json" in before and any(k.startswith("checkpoints/") for k in before)
    again = run_cli(*command, "resume_from_checkpoint=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == (
        f"prunelab: {run_dir} holds a completed run (see its summary.json); nothing to resume")
    assert _tree(run_dir) == before


def test_a_dense_run_notes_the_pruning_keys_its_preset_set(tiny_data_root, tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "dense.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /pattern: 1x1\n"
        "do_prune: false\ntarget_sparsity: 0.9\npruning_frequency: 7\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    result = run_cli("--config-dir", str(tmp_path / "conf"), *TINY, "save_model=false", "experiment=dense",
                  f"data_root={tiny_data_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["do_prune"] is False
    assert ("do_prune=false: no effect from the preset's pruning.pattern=1x1, target_sparsity=0.9, "
            "pruning_frequency=7") in summary["notes"]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["pruning.obs.num_grads=60"], "pruning: obs: num_grads=60 x num_recomputations=1 gradient steps must fit"),
    (["pruning.obs.num_recomputations=1000"],
     "pruning: obs: num_grads=0 (unset: 1 steps // num_recomputations) x num_recomputations=1000 gradient steps must fit"),
])
def test_an_obs_window_the_run_is_too_short_for_is_refused_with_the_runs_length(tiny_data_root, tmp_path, overrides, expected):
    line = one_line(run_cli("model=tiny", "pruner=obs", "num_train_epochs=2", "max_train_samples=64", "max_length=32",
                            "per_device_train_batch_size=8", f"data_root={tiny_data_root}", *overrides,
                            f"hydra.run.dir={tmp_path / 'run'}"))
    assert line.startswith(f"prunelab: error: {expected}") and line.endswith("(this run has 16 optimizer steps)")
