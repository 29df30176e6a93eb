"""The end of a sweep (``prunelab -m ...``) in one line: how many of its jobs failed.

Jobs may run in other processes (``hydra/launcher=joblib``) or on other machines (submitit), so
how each one ended is read from the ``summary.json`` it writes (``status: failed`` with the error
line), not from Hydra's in-process job returns. :class:`RecordSweep`, a Hydra callback named in
``conf/config.yaml`` (``hydra.callbacks``), notes the sweep dir when the sweep starts; once Hydra
returns, the command line calls :func:`take_outcome` and prints :attr:`SweepOutcome.line`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# Files that mark a job dir (as prunelab.report finds them): their state when the sweep started
# tells this sweep's jobs from an earlier sweep's left in the same dir (a reused hydra.sweep.dir).
_MARKS = ("summary.json", os.path.join(".hydra", "overrides.yaml"))


@dataclass
class Sweep:
    dir: str  # as configured (relative to the launch dir unless absolute), for messages
    before: set[tuple] = field(default_factory=set)  # _stamp() of each mark file found at the start


@dataclass
class SweepOutcome:
    dir: str
    jobs: int
    failed: int
    all_summarised: bool  # every failed job wrote a summary.json saying failed (with its error)

    @property
    def line(self) -> str | None:
        """``prunelab: N of M jobs failed ...`` when some job failed, else None."""
        if not self.failed:
            return None
        if self.all_summarised:
            return (f"prunelab: {self.failed} of {self.jobs} jobs failed (their summary.json has the error); "
                    f"sweep dir: {self.dir}")
        return (f"prunelab: {self.failed} of {self.jobs} jobs failed (see the lines above, or "
                f"python -m prunelab.report {self.dir})")


_started: Sweep | None = None


class RecordSweep(Callback):
    """Hydra callback: remember the dir of the sweep this process launches."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _started
        sweep_dir = str(config.hydra.sweep.dir)
        _started = Sweep(sweep_dir, _marks(Path(sweep_dir)))


def take_outcome() -> SweepOutcome | None:
    """How the sweep this process launched ended (None if it launched none); forgets the sweep."""
    global _started
    sweep, _started = _started, None
    if sweep is None or not Path(sweep.dir).is_dir():
        return None
    # prunelab.report defines what a job dir is and finds the jobs multirun.yaml planned that never
    # started; imported here only, as it is not needed before a sweep ends.
    from prunelab.report.jobs import ReportInputError, find_jobs

    try:
        jobs = find_jobs([Path(sweep.dir)])
    except ReportInputError:
        return None
    ours = [job for job in jobs if _of_this_sweep(job.path, sweep.before)]
    # A summary.json this sweep did not write is an earlier run's (this job was refused or killed).
    statuses = [(job.summary or {}).get("status") if _fresh(job.path / "summary.json", sweep.before) else None
                for job in ours]
    failed = [status for status in statuses if status != "completed"]
    return SweepOutcome(sweep.dir, len(ours), len(failed), all(status == "failed" for status in failed))


def _marks(sweep_dir: Path) -> set[tuple]:
    found = set()
    if sweep_dir.is_dir():
        for current, _dirs, _files in os.walk(sweep_dir):
            for name in _MARKS:
                path = os.path.join(current, name)
                if os.path.isfile(path):
                    found.add(_stamp(path))
    return found


def _stamp(path: str | Path) -> tuple:
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_mtime_ns, stat.st_size


def _fresh(path: Path, before: set[tuple]) -> bool:
    """``path`` was written (or rewritten) since the sweep started."""
    return path.is_file() and _stamp(path) not in before


def _of_this_sweep(job_dir: Path, before: set[tuple]) -> bool:
    if not job_dir.is_dir():
        return True  # planned in this sweep's multirun.yaml, never started
    return any(_fresh(job_dir / name, before) for name in _MARKS)
