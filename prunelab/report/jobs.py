"""Find the job directories of one or more sweeps and read what each job left behind.

A job dir is any directory holding ``summary.json`` or Hydra's ``.hydra/overrides.yaml``. Every
job becomes a :class:`Job`, whatever state it ended in: a crashed job is reported, never dropped.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from prunelab.report.sweep_plan import expected_jobs

COMPLETED, FAILED, RUNNING, MISSING, INVALID = "completed", "failed", "running", "missing", "invalid"

# Keys a completed summary must carry for the table; the full schema is written by prunelab.app.run.
REQUIRED_SUMMARY_KEYS = ("model", "task", "do_prune", "seed", "main_metric", "metrics", "sparsity")


class ReportInputError(ValueError):
    """The paths given to the report hold nothing it can read."""


@dataclass
class Job:
    """One job of a sweep.

    status: completed | failed | running (summary says so; a hard kill leaves "running") |
    missing (no summary.json, or no job dir at all) | invalid (summary unreadable or incomplete).
    summary: the parsed summary.json, or None. error: one line saying what went wrong, or None.
    """

    path: Path
    overrides: list[str]
    status: str
    summary: dict | None = None
    error: str | None = None

    @property
    def metric(self) -> float | None:
        if self.status != COMPLETED:
            return None
        return float(self.summary["metrics"][self.summary["main_metric"]])

    @property
    def greater_is_better(self) -> bool | None:
        """Whether a larger main metric is better (the task's declaration; null in a run that
        failed before its task was built); a summary written before summary.json carried the key
        is read as true, as every task then was."""
        return self.summary.get("greater_is_better", True)

    @property
    def int8_metric(self) -> float | None:
        """The main metric of the run's int8 model (``quant=...``), or None."""
        quantized = self.summary.get("quantization") if self.status == COMPLETED else None
        return float(quantized["metrics"][self.summary["main_metric"]]) if quantized else None


def _natural_key(path: Path) -> list:
    # job dirs are numbered 0, 1, ..., 10: sort 10 after 9, not after 1
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _read_overrides(job_dir: Path, summary: dict | None) -> list[str]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        return [str(item) for item in (yaml.safe_load(overrides_file.read_text()) or [])]
    if summary and isinstance(summary.get("overrides"), list):
        return [str(item) for item in summary["overrides"]]
    return []


def _last_log_line(job_dir: Path) -> str | None:
    for log_file in sorted(job_dir.glob("*.log")):
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return f"last log line: {lines[-1]}"
    return None


def _check_summary(summary: dict) -> str | None:
    """Why a summary that claims to be completed cannot be tabulated, or None."""
    missing = [key for key in REQUIRED_SUMMARY_KEYS if summary.get(key) is None]
    if missing:
        return f"summary.json lacks {', '.join(missing)}"
    if not isinstance(summary.get("greater_is_better", True), bool):
        return f"summary.json greater_is_better is {summary['greater_is_better']!r}, not true or false"
    value = summary["metrics"].get(summary["main_metric"])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"summary.json metrics[{summary['main_metric']!r}] is {value!r}, not a number"
    return None


def read_job(job_dir: Path) -> Job:
    """Read one job dir into a Job, classifying how it ended."""
    summary_file = job_dir / "summary.json"
    if not summary_file.is_file():
        error = _last_log_line(job_dir) or "no log"
        return Job(job_dir, _read_overrides(job_dir, None), MISSING,
                   error=f"no summary.json (the job crashed or was killed before writing it); {error}")
    try:
        summary = json.loads(summary_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Job(job_dir, _read_overrides(job_dir, None), INVALID,
                   error=f"summary.json is unreadable: {type(exc).__name__}: {exc}")
    overrides = _read_overrides(job_dir, summary)
    status = summary.get("status")
    if status == FAILED:
        return Job(job_dir, overrides, status, summary, summary.get("error"))
    if status == RUNNING:
        return Job(job_dir, overrides, status, summary,
                   "summary.json says running: the job is still running, or was killed before it could record its end")
    if status != COMPLETED:
        return Job(job_dir, overrides, INVALID, summary,
                   f"summary.json status is {status!r}; allowed: completed, failed, running")
    problem = _check_summary(summary)
    return Job(job_dir, overrides, INVALID if problem else COMPLETED, summary, problem)


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(job dirs, sweep dirs) under root; a job dir is not searched further."""
    job_dirs, sweep_dirs = [], []
    for current, dirnames, filenames in os.walk(root):
        here = Path(current)
        if "multirun.yaml" in filenames:
            sweep_dirs.append(here)
        if "summary.json" in filenames or (here / ".hydra" / "overrides.yaml").is_file():
            job_dirs.append(here)
            dirnames.clear()
        else:
            # .hydra / .submitit hold configs and launcher logs, never jobs
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
    return job_dirs, sweep_dirs


def _never_started(sweep_dir: Path, found: list[Job]) -> list[Job]:
    """Jobs the sweep's multirun.yaml asked for that left no job dir at all."""
    plan = expected_jobs(sweep_dir)
    present = {}
    for job in found:
        if sweep_dir in job.path.parents:
            key = tuple(sorted(job.overrides))
            present[key] = present.get(key, 0) + 1
    missing = []
    for planned in plan:
        key = tuple(sorted(planned.overrides))
        if present.get(key, 0) > 0:
            present[key] -= 1
        else:
            missing.append(Job(planned.path, planned.overrides, MISSING,
                               error="no job dir: the launcher never started this job"))
    return missing


def find_jobs(roots: list[Path]) -> list[Job]:
    """Every job under the given sweep dirs (or single job dirs), in sweep order.

    Raises ReportInputError for a root that is not a directory or that holds no job.
    """
    jobs: list[Job] = []
    seen: set[Path] = set()  # resolved job and sweep dirs: overlapping roots read each once
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ReportInputError(f"sweep dir {str(root)!r} does not exist or is not a directory")
        job_dirs, sweep_dirs = _walk(root)
        found = [read_job(path) for path in sorted(job_dirs, key=_natural_key) if path.resolve() not in seen]
        for sweep_dir in sweep_dirs:
            if sweep_dir.resolve() not in seen:
                found += _never_started(sweep_dir, jobs + found)
        seen.update(path.resolve() for path in [*job_dirs, *sweep_dirs])
        jobs += found
    if not jobs:
        raise ReportInputError(
            f"no jobs found under {', '.join(map(str, roots))}: a job dir holds summary.json or "
            ".hydra/overrides.yaml (pass a sweep dir such as multirun/<date>/<time>)")
    return jobs
