"""The sweep report on hand-written job dirs: discovery, statuses, grouping, pairing, md/csv, CLI."""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import yaml

from prunelab.report import build_report
from prunelab.report.__main__ import main
from prunelab.report.grouping import override_values
from prunelab.report.jobs import COMPLETED, FAILED, INVALID, MISSING, ReportInputError, find_jobs
from prunelab.report.sweep_plan import expected_jobs

OPS = ("attention.self.query", "attention.self.key", "attention.self.value",
       "attention.output.dense", "intermediate.dense", "output.dense")


def fake_summary(do_prune: bool, pattern: str | None, target: float | None, seed: int, metric: float,
                 status: str = COMPLETED, error: str | None = None, task: str = "mrpc",
                 main_metric: str = "accuracy", greater_is_better: bool = True) -> dict:
    """A summary.json in the app's schema for a 2-layer BERT; layer 1 is pruned harder than layer 0."""
    ratio = target or 0.0
    ops = {f"bert.encoder.layer.{layer}.{op}": {
        "shape": [32, 32], "numel": 1024, "zeros": int(1024 * ratio * (0.75 + layer / 2)),
        "sparsity": ratio * (0.75 + layer / 2), "pattern": pattern, "group": 0} for layer in (0, 1) for op in OPS}
    return {
        "status": status, "error": error, "task": task, "task_family": "glue", "model": "tiny",
        "model_name_or_path": "/models/tiny", "do_prune": do_prune, "pattern": pattern if do_prune else None,
        "pruning_type": "snip_momentum" if do_prune else None, "target_sparsity": target if do_prune else None,
        "seed": seed, "main_metric": f"eval/{main_metric}", "greater_is_better": greater_is_better,
        "metrics": {} if status != COMPLETED else {f"eval/{main_metric}": metric, "eval/f1": metric + 0.05},
        "sparsity": {"ops": ops if do_prune else {}, "unpruned_ops": ["classifier"],
                     "pruned_ops_sparsity": ratio, "linear_conv_sparsity": ratio * 0.9 + seed / 1000,
                     "all_params_sparsity": ratio * 0.5, "target_sparsity": ratio, "groups": [], "step": 10},
        "overrides": [], "notes": [], "wall_time_s": 1.0, "versions": {}, "output_dir": "",
    }


def write_job(job_dir: Path, overrides: list[str], summary: dict | None) -> Path:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (job_dir / "summary.json").write_text(json.dumps({**summary, "overrides": overrides}))
    return job_dir


# accuracy per (do_prune, pattern, seed) of the grid below
METRICS = {(False, "4x1", 1): 0.80, (False, "4x1", 2): 0.82, (False, "2:4", 1): 0.80, (False, "2:4", 2): 0.82,
           (True, "4x1", 1): 0.70, (True, "4x1", 2): 0.74, (True, "2:4", 1): 0.78, (True, "2:4", 2): 0.76}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """The grid do_prune x pattern x seed (8 jobs, dense runs duplicated per pattern) as Hydra lays
    it out, where job 1 (dense seed 2) crashed without a summary, job 4 (4x1 seed 1) failed and
    job 7 (2:4 seed 2) never started."""
    sweep_dir = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweep": {"dir": "elsewhere", "subdir": "${hydra.job.num}"},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "max_batch_size": None, "params": {"do_prune": "false,true", "pattern": "4x1,2:4"}},
        "overrides": {"task": ["seed=1,2", "model=tiny"]}}}))
    grid = itertools.product((False, True), ("4x1", "2:4"), (1, 2))
    for num, (do_prune, pattern, seed) in enumerate(grid):
        # as Hydra records them: bools capitalised, the colon of 2:4 escaped
        overrides = [f"do_prune={do_prune}", "pattern=" + pattern.replace(":", "\\:"), f"seed={seed}", "model=tiny"]
        summary = fake_summary(do_prune, pattern, 0.8 if pattern == "4x1" else 0.5, seed,
                               METRICS[(do_prune, pattern, seed)])
        if num == 4:
            summary = fake_summary(True, "4x1", 0.8, 1, 0.0, status=FAILED, error="RuntimeError: boom")
        if num == 7:
            continue
        write_job(sweep_dir / str(num), overrides, None if num == 1 else summary)
    return sweep_dir


def test_overlapping_roots_read_each_job_once(sweep: Path):
    jobs = find_jobs([sweep / "3", sweep.parent, sweep])
    assert len(jobs) == 8 and jobs[0].path == sweep / "3"
    assert [job.path for job in jobs if job.status == MISSING] == [sweep / "1", sweep / "7"]


def test_a_rerun_seed_replaces_its_failed_run(sweep: Path, tmp_path: Path):
    write_job(tmp_path / "rerun" / "0", ["do_prune=True", "pattern=4x1", "seed=1", "model=tiny"],
              fake_summary(True, "4x1", 0.8, 1, 0.72))
    report = build_report([sweep, tmp_path / "rerun"], tmp_path / "out", plots=False)
    row_4x1 = report.rows[0]
    assert row_4x1.sparse.seeds == [2, 1] and row_4x1.sparse.unfinished == []
    assert row_4x1.sparse.mean == pytest.approx(0.73)
    assert "0.7300 / 0.7400 (n=2) |" in report.markdown.read_text()
    assert [job.status for job in report.jobs].count(FAILED) == 1  # still listed as a problem


def test_plan_expands_multirun_yaml_like_the_basic_sweeper(sweep: Path):
    plan = expected_jobs(sweep)
    assert len(plan) == 8
    assert plan[0].overrides == ["do_prune=False", "pattern=4x1", "seed=1", "model=tiny"]
    assert plan[7].overrides == ["do_prune=True", "pattern=2\\:4", "seed=2", "model=tiny"]
    assert plan[7].path == sweep / "7"


def test_find_jobs_classifies_every_job(sweep: Path):
    jobs = find_jobs([sweep.parent.parent])  # the date dir's parent works too
    by_path = {job.path: job for job in jobs}
    assert len(jobs) == 8
    assert [job.status for job in jobs].count(COMPLETED) == 5
    assert by_path[sweep / "4"].status == FAILED and by_path[sweep / "4"].error == "RuntimeError: boom"
    assert by_path[sweep / "1"].status == MISSING and "no summary.json" in by_path[sweep / "1"].error
    assert by_path[sweep / "7"].status == MISSING and "never started" in by_path[sweep / "7"].error
    assert by_path[sweep / "7"].overrides == ["do_prune=True", "pattern=2\\:4", "seed=2", "model=tiny"]


def test_rows_pair_dense_and_sparse_with_seed_statistics(sweep: Path, tmp_path: Path):
    report = build_report([sweep], tmp_path / "out", plots=False)
    assert [(row.sparse.pattern, row.sparse.target_sparsity) for row in report.rows] == [("4x1", 0.8), ("2:4", 0.5)]
    row_4x1, row_2in4 = report.rows
    assert row_4x1.dense is row_2in4.dense
    dense = row_4x1.dense
    assert dense.seeds == [1, 2] and [job.path for job in dense.duplicates] == [sweep / "2"]
    assert dense.mean == pytest.approx(0.81) and dense.best == pytest.approx(0.82)
    assert row_4x1.sparse.seeds == [2] and [job.status for job in row_4x1.sparse.unfinished] == [FAILED]
    assert row_4x1.sparse.mean == pytest.approx(0.74)
    assert row_4x1.relative_drop_pct == pytest.approx(100 * (0.81 - 0.74) / 0.81)
    assert row_2in4.sparse.seeds == [1] and row_2in4.sparse.mean == pytest.approx(0.78)
    assert row_2in4.sparse.sparsity_mean("linear_conv_sparsity") == pytest.approx(0.5 * 0.9 + 0.001)


def test_markdown_has_reference_layout_and_lists_problems(sweep: Path, tmp_path: Path):
    text = build_report([sweep], tmp_path / "out", plots=False).markdown.read_text()
    assert ("| Model | Dataset | Sparsity pattern | Element-wise/matmul, Gemm, conv ratio | "
            "Dense accuracy (mean / best) | Sparse accuracy (mean / best) | Relative drop |") in text
    assert "## accuracy\n" in text and "lower is better" not in text.split("Metric cells")[0]
    assert ("| tiny | mrpc | 4x1 | 0.7220 (target 0.8) | 0.8100 / 0.8200 (n=2) | "
            "0.7400 / 0.7400 (n=1; 1 failed) | +8.64% |") in text
    assert ("| tiny | mrpc | 2:4 | 0.4510 (target 0.5) | 0.8100 / 0.8200 (n=2) | "
            "0.7800 / 0.7800 (n=1) | +3.70% |") in text
    problems = text.split("## Failed, running and missing jobs")[1]
    assert (f"| failed | `{sweep / '4'}` | `do_prune=True pattern=4x1 seed=1 model=tiny` | "
            "RuntimeError: boom |") in problems
    assert f"| missing | `{sweep / '1'}`" in problems and f"| missing | `{sweep / '7'}`" in problems
    assert "Jobs: 8 (5 completed, 1 failed, 2 missing)" in text


def test_csv_holds_the_numbers_of_the_summaries(sweep: Path, tmp_path: Path):
    report = build_report([sweep], tmp_path / "out", plots=False)
    with report.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["pattern"] for row in rows] == ["4x1", "2:4"]
    first = rows[0]
    assert float(first["dense_mean"]) == pytest.approx(0.81) and float(first["dense_best"]) == pytest.approx(0.82)
    assert first["dense_n"] == "2" and first["dense_seeds"] == "1 2"
    assert float(first["sparse_mean"]) == pytest.approx(0.74) and first["sparse_not_completed"] == "1 failed"
    assert float(first["pruned_ops_sparsity"]) == pytest.approx(0.8)
    assert float(first["linear_conv_sparsity"]) == pytest.approx(0.722)
    assert float(first["relative_drop_pct"]) == pytest.approx(100 * 0.07 / 0.81, abs=1e-4)
    assert (first["metric"], first["greater_is_better"], first["target_sparsity"]) == ("accuracy", "True", "0.8")


def test_varying_override_splits_rows_and_pairs_with_matching_dense(tmp_path: Path):
    for num, (lr, do_prune, seed) in enumerate(itertools.product(("1e-5", "3e-5"), (False, True), (1, 2))):
        metric = 0.8 + 0.01 * seed + (0.05 if lr == "3e-5" else 0.0) - (0.1 if do_prune else 0.0)
        write_job(tmp_path / "sweep" / str(num), [f"learning_rate={lr}", f"do_prune={do_prune}", f"seed={seed}"],
                  fake_summary(do_prune, "4x1", 0.8, seed, metric))
    report = build_report([tmp_path / "sweep"], plots=False)
    assert report.extras == ["learning_rate"]
    assert [row.sparse.extras for row in report.rows] == [(("learning_rate", "1e-5"),), (("learning_rate", "3e-5"),)]
    assert [row.dense.mean for row in report.rows] == pytest.approx([0.815, 0.865])
    assert [row.sparse.mean for row in report.rows] == pytest.approx([0.715, 0.765])
    assert "| Model | Dataset | learning_rate | Sparsity pattern |" in report.markdown.read_text()


def test_dense_sweep_without_the_key_pairs_with_every_value(tmp_path: Path):
    write_job(tmp_path / "dense" / "0", ["do_prune=false", "seed=1"], fake_summary(False, None, None, 1, 0.9))
    for num, kind in enumerate(("magnitude", "snip")):
        write_job(tmp_path / "sparse" / str(num), [f"pruning_type={kind}", "seed=1"],
                  fake_summary(True, "4x1", 0.8, 1, 0.6 + num / 10))
    report = build_report([tmp_path / "dense", tmp_path / "sparse"], tmp_path / "out", plots=False)
    assert [row.sparse.mean for row in report.rows] == pytest.approx([0.6, 0.7])
    assert [row.relative_drop_pct for row in report.rows] == pytest.approx([100 / 3, 100 * 0.2 / 0.9])


def test_rows_without_dense_say_so_and_dense_only_rows_are_kept(tmp_path: Path):
    write_job(tmp_path / "s" / "0", ["seed=1"], fake_summary(True, "4x1", 0.8, 1, 0.7, task="sst2"))
    write_job(tmp_path / "s" / "1", ["seed=1"], fake_summary(False, None, None, 1, 0.9, task="mrpc"))
    text = build_report([tmp_path / "s"], plots=False).markdown.read_text()
    assert "| tiny | sst2 | 4x1 | 0.7210 (target 0.8) | no dense run (do_prune=false) for this model and task |" in text
    assert "| tiny | mrpc | dense | 0.0010 | 0.9000 / 0.9000 (n=1) | — (dense only) | — |" in text


def test_unreadable_and_incomplete_summaries_are_invalid(tmp_path: Path):
    write_job(tmp_path / "s" / "0", ["seed=1"], fake_summary(True, "4x1", 0.8, 1, 0.7))
    (tmp_path / "s" / "0" / "summary.json").write_text('{"status": "compl')
    incomplete = fake_summary(True, "4x1", 0.8, 2, 0.7)
    del incomplete["metrics"]["eval/accuracy"]
    write_job(tmp_path / "s" / "1", ["seed=2"], incomplete)
    write_job(tmp_path / "s" / "2", ["seed=3"], {**fake_summary(True, "4x1", 0.8, 3, 0.7), "greater_is_better": "yes"})
    jobs = find_jobs([tmp_path / "s"])
    assert [job.status for job in jobs] == [INVALID, INVALID, INVALID]
    assert "unreadable: JSONDecodeError" in jobs[0].error
    assert "metrics['eval/accuracy'] is None" in jobs[1].error
    assert jobs[2].error == "summary.json greater_is_better is 'yes', not true or false"


def test_jobs_that_died_early_join_their_row(tmp_path: Path):
    write_job(tmp_path / "s" / "0", ["seed=1"], fake_summary(True, "4x1", 0.8, 1, 0.7))
    early = fake_summary(True, "4x1", 0.8, 2, 0.0, status=FAILED, error="OSError: no data")
    early["main_metric"] = None  # failed before its task was built
    write_job(tmp_path / "s" / "1", ["seed=2"], early)
    killed = fake_summary(True, "4x1", 0.8, 3, 0.0, status="running")
    write_job(tmp_path / "s" / "2", ["seed=3"], killed)
    report = build_report([tmp_path / "s"], plots=False)
    (row,) = report.rows
    assert row.sparse.seeds == [1] and [job.status for job in row.sparse.unfinished] == [FAILED, "running"]
    assert "0.7000 / 0.7000 (n=1; 1 failed, 1 running)" in report.markdown.read_text()
    assert "killed before it could record its end" in report.jobs[2].error


def test_override_values_strips_prefixes_and_skips_deletions():
    assert override_values(["+lr=3e-5", "++a.b=1", "~c", "pattern=2:4"]) == {"lr": "3e-5", "a.b": "1", "pattern": "2:4"}


def test_cli_writes_files_and_prints_paths(sweep: Path, capsys):
    assert main([str(sweep), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "8 jobs: 5 completed, 1 failed, 2 missing" in out
    assert f"wrote {sweep / 'results.md'}" in out and f"wrote {sweep / 'results.csv'}" in out
    with (sweep / "results.csv").open() as handle:
        assert [row["pattern"] for row in csv.DictReader(handle)] == ["4x1", "2:4"]  # the sweep's rows


def test_cli_rejects_dirs_without_jobs(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith(f"python -m prunelab.report: error: no jobs found under {tmp_path / 'empty'}")
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"python -m prunelab.report: error: sweep dir '{tmp_path / 'nope'}' does not exist or is not a directory\n"


def test_int8_metrics_sit_beside_the_float_ones(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    for job, (do_prune, seed, metric, int8) in enumerate([(False, 1, 0.80, None), (True, 1, 0.76, 0.75),
                                                         (True, 2, 0.78, 0.74)]):
        summary = fake_summary(do_prune, "4x1", 0.8, seed, metric)
        if int8 is not None:
            summary["quantization"] = {"approach": "static", "metrics": {"eval/accuracy": int8, "eval/f1": int8},
                                       "size_bytes": 10, "float_size_bytes": 40}
        write_job(sweep_dir / str(job), [f"do_prune={do_prune}", f"seed={seed}"], summary)
    report = build_report([sweep_dir], plots=False)
    text = report.markdown.read_text()
    assert "| int8 accuracy (mean / best) |" in text
    assert "| 0.7450 / 0.7500 (n=2) |" in text
    rows = list(csv.DictReader(report.csv.open()))
    assert (rows[0]["int8_mean"], rows[0]["int8_best"], rows[0]["int8_n"]) == ("0.745000", "0.750000", "2")


def _perplexity_sweep(sweep_dir: Path) -> None:
    """task=clm as the app writes it: dense perplexities 20, 22; 4x1 at 0.8: 30, 27 (int8: 31, 28);
    2:4 at 0.5: 19, 20 (better than dense)."""
    runs = [(False, None, None, 1, 20.0, None), (False, None, None, 2, 22.0, None),
            (True, "4x1", 0.8, 1, 30.0, 31.0), (True, "4x1", 0.8, 2, 27.0, 28.0),
            (True, "2:4", 0.5, 1, 19.0, None), (True, "2:4", 0.5, 2, 20.0, None)]
    for num, (do_prune, pattern, target, seed, metric, int8) in enumerate(runs):
        summary = fake_summary(do_prune, pattern, target, seed, metric, task="clm", main_metric="perplexity",
                               greater_is_better=False)
        if int8 is not None:
            summary["quantization"] = {"approach": "dynamic", "metrics": {"eval/perplexity": int8},
                                       "size_bytes": 10, "float_size_bytes": 40}
        write_job(sweep_dir / str(num), [f"do_prune={do_prune}", f"pattern={pattern}", f"seed={seed}"], summary)


def test_lower_is_better_metric_takes_the_lowest_seed_as_best_and_a_rise_as_a_drop(tmp_path: Path):
    _perplexity_sweep(tmp_path / "sweep")
    report = build_report([tmp_path / "sweep"], plots=False)
    row_4x1, row_2in4 = report.rows
    assert (row_4x1.dense.mean, row_4x1.dense.best) == pytest.approx((21.0, 20.0))
    assert (row_4x1.sparse.mean, row_4x1.sparse.best) == pytest.approx((28.5, 27.0))
    assert row_4x1.relative_drop_pct == pytest.approx(100 * 7.5 / 21)  # worse than dense: positive
    assert (row_2in4.sparse.mean, row_2in4.sparse.best) == pytest.approx((19.5, 19.0))
    assert row_2in4.relative_drop_pct == pytest.approx(-100 * 1.5 / 21)  # better than dense: negative
    text = report.markdown.read_text()
    assert "## perplexity (lower is better)\n" in text
    assert ("| Dense perplexity (mean / best) | Sparse perplexity (mean / best) | Relative drop | "
            "int8 perplexity (mean / best) |") in text
    assert ("| tiny | clm | 4x1 | 0.7215 (target 0.8) | 21.0000 / 20.0000 (n=2) | 28.5000 / 27.0000 (n=2) | "
            "+35.71% | 29.5000 / 28.0000 (n=2) |") in text
    assert "| 19.5000 / 19.0000 (n=2) | -7.14% | — |" in text
    rows = list(csv.DictReader(report.csv.open()))
    assert [(row["pattern"], row["greater_is_better"]) for row in rows] == [("4x1", "False"), ("2:4", "False")]
    assert (rows[0]["dense_best"], rows[0]["sparse_best"], rows[0]["int8_best"]) == ("20.000000", "27.000000", "28.000000")
    assert (rows[0]["relative_drop_pct"], rows[1]["relative_drop_pct"]) == ("35.7143", "-7.1429")


def test_a_task_whose_summaries_disagree_on_greater_is_better_is_refused_in_one_line(tmp_path: Path, capsys):
    _perplexity_sweep(tmp_path / "sweep")
    old = json.loads((tmp_path / "sweep" / "3" / "summary.json").read_text())
    del old["greater_is_better"]  # written before the key existed: read as true
    (tmp_path / "sweep" / "3" / "summary.json").write_text(json.dumps(old))
    with pytest.raises(ReportInputError, match="greater_is_better disagrees for task clm"):
        build_report([tmp_path / "sweep"], plots=False)
    assert main([str(tmp_path / "sweep"), "--no-plots"]) == 2
    assert capsys.readouterr().err == (
        "python -m prunelab.report: error: summary.json greater_is_better disagrees for task clm (eval/perplexity): "
        f"false in {tmp_path / 'sweep' / '0'}, true in {tmp_path / 'sweep' / '3'} "
        "(a summary without the key reads as true)\n")


def test_relative_drop_is_positive_when_worse_also_below_zero(tmp_path: Path):
    # A Matthews correlation can be negative: -0.3 against a dense -0.2 is worse, by half.
    write_job(tmp_path / "s" / "0", ["do_prune=false"], fake_summary(False, None, None, 1, -0.2, task="cola"))
    write_job(tmp_path / "s" / "1", ["do_prune=true"], fake_summary(True, "4x1", 0.8, 1, -0.3, task="cola"))
    (row,) = build_report([tmp_path / "s"], plots=False).rows
    assert row.relative_drop_pct == pytest.approx(50.0)


def test_a_task_none_of_whose_runs_completed_still_says_lower_is_better(tmp_path: Path):
    failed = fake_summary(True, "4x1", 0.8, 1, 0.0, status=FAILED, error="RuntimeError: boom", task="clm",
                          main_metric="perplexity", greater_is_better=False)
    write_job(tmp_path / "s" / "0", ["seed=1"], failed)
    text = build_report([tmp_path / "s"], plots=False).markdown.read_text()
    assert "## perplexity (lower is better)\n" in text and "| no completed run (1 failed) |" in text


def test_a_job_refused_for_a_target_that_is_no_number_is_listed_not_placed(tmp_path: Path):
    """A typo in a sweep (target_sparsity=O.8) records the raw value in the refused job's summary."""
    jobs = tmp_path / "jobs"
    write_job(jobs / "0", ["target_sparsity=0.5"], fake_summary(True, "4x1", 0.5, 1, 0.75))
    refused = fake_summary(True, "4x1", None, 1, 0.0, status=FAILED, error="ConfigError: target_sparsity='O.8': must be a number")
    write_job(jobs / "1", ["target_sparsity=O.8"], {**refused, "target_sparsity": "O.8"})
    text = build_report([jobs], tmp_path / "out", plots=False).markdown.read_text()
    problems = text.split("## Failed, running and missing jobs")[1]
    assert f"| failed | `{jobs / '1'}` | `target_sparsity=O.8` | ConfigError: target_sparsity='O.8': must be a number |" in problems
    assert "| tiny | mrpc | 4x1 | 0.4510 (target 0.5) | no dense run (do_prune=false) for this model and task | 0.7500 / 0.7500 (n=1) |" in text
    assert "Jobs: 2 (1 completed, 1 failed)" in text
