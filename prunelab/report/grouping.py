"""Group jobs into table rows and pair each sparse row with its dense baseline.

A row is one (model, task, pattern, target sparsity) cell of the grid, averaged over seeds. Any
other override that varies inside such a cell (a learning rate, a pruning type, a second model
checkpoint) becomes an extra grouping column instead of being averaged away.

Which way a metric improves is the task's declaration, read from each summary's
``greater_is_better`` (never from a task's name): it picks the best seed and signs the relative
drop. Completed runs of one task and main metric that disagree (summaries written before the key
existed read as true) make the report refuse, as their numbers would be ranked both ways.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from prunelab.report.jobs import COMPLETED, INVALID, Job, ReportInputError

# Override keys (last dotted component) that the summary's own fields already describe
AXIS_KEYS = frozenset({"model", "task", "pattern", "target_sparsity", "do_prune", "seed"})
# Summary fields a job needs to be placed in a row; jobs without them are only listed as problems
PLACEMENT_KEYS = ("model", "task", "do_prune")
UNKNOWN_METRIC = "eval/unknown"


@dataclass
class Group:
    """Runs of one grid cell. ``runs`` holds one completed job per seed."""

    model: str
    task: str
    task_family: str | None
    main_metric: str
    do_prune: bool
    pattern: str | None
    target_sparsity: float | None
    extras: tuple[tuple[str, str | None], ...]
    greater_is_better: bool = True
    runs: list[Job] = field(default_factory=list)
    unfinished: list[Job] = field(default_factory=list)
    duplicates: list[Job] = field(default_factory=list)

    @property
    def metric_name(self) -> str:
        return self.main_metric.removeprefix("eval/")

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return [job.summary["seed"] for job in self.runs]

    def _metrics(self) -> np.ndarray:
        return np.array([job.metric for job in self.runs], dtype=float)

    @property
    def mean(self) -> float:
        return float(self._metrics().mean()) if self.runs else math.nan

    @property
    def best(self) -> float:
        """The best seed's metric: the largest, or the smallest where lower is better."""
        return self.best_of(self._metrics().tolist()) if self.runs else math.nan

    def best_of(self, values: list[float]) -> float:
        return float(max(values) if self.greater_is_better else min(values))

    @property
    def int8(self) -> list[float]:
        """The int8 model's main metric of each run that quantized."""
        return [job.int8_metric for job in self.runs if job.int8_metric is not None]

    def sparsity_mean(self, key: str) -> float:
        """Mean over seeds of a whole-model ratio from summary["sparsity"] (NaN where absent)."""
        values = [job.summary["sparsity"].get(key, math.nan) for job in self.runs]
        return float(np.mean(np.array(values, dtype=float))) if values else math.nan


@dataclass
class Row:
    """A sparse group with its dense baseline, or a dense group that no sparse row used."""

    sparse: Group | None
    dense: Group | None
    dense_note: str | None = None  # why there is no dense partner

    @property
    def main(self) -> Group:
        return self.sparse or self.dense

    @property
    def relative_drop_pct(self) -> float:
        """How much worse the sparse mean is than the dense mean, in percent of the dense mean's
        size: (dense - sparse) where higher is better, (sparse - dense) where lower is better
        (perplexity). Positive always means the sparse model is worse, also for a negative dense
        mean (a Matthews correlation)."""
        if self.sparse is None or self.dense is None or not self.sparse.runs or not self.dense.runs:
            return math.nan
        if self.dense.mean == 0.0:
            return math.nan
        worse_by = self.dense.mean - self.sparse.mean
        if not self.sparse.greater_is_better:
            worse_by = -worse_by
        return 100.0 * worse_by / abs(self.dense.mean)


def override_values(overrides: list[str]) -> dict[str, str]:
    """``["+lr=3e-5", "seed=1"]`` -> ``{"lr": "3e-5", "seed": "1"}`` (deletions ``~key`` skipped)."""
    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and not key.startswith("~"):
            values[key.lstrip("+")] = value
    return values


def _is_axis_key(key: str) -> bool:
    return key.replace("/", ".").split(".")[-1] in AXIS_KEYS


def _axes(summary: dict, task_metrics: dict[str, str]) -> tuple:
    do_prune = bool(summary["do_prune"])
    target = summary.get("target_sparsity") if do_prune else None
    # a job that failed before its task loaded has no main_metric: take its task's from other jobs
    main_metric = summary["main_metric"] or task_metrics.get(summary["task"], UNKNOWN_METRIC)
    return (summary["model"], summary["task"], main_metric, do_prune,
            summary.get("pattern") if do_prune else None,
            None if target is None else round(float(target), 6))


def _task_metrics(jobs: list[Job]) -> dict[str, str]:
    return {job.summary["task"]: job.summary["main_metric"] for job in jobs if job.summary.get("main_metric")}


def _directions(jobs: list[Job]) -> dict[tuple[str, str], bool]:
    """greater_is_better per (task, main metric), from the completed runs (the ones whose numbers
    are ranked; a task none of whose runs completed takes what its other runs declared, for the
    headings). Raises ReportInputError naming two completed runs' summaries that disagree."""
    first: dict[tuple[str, str], Job] = {}
    for job in jobs:
        if job.status != COMPLETED:
            continue
        key = (job.summary["task"], job.summary["main_metric"])
        seen = first.setdefault(key, job)
        if seen.greater_is_better != job.greater_is_better:
            raise ReportInputError(
                f"summary.json greater_is_better disagrees for task {key[0]} ({key[1]}): "
                f"{json.dumps(seen.greater_is_better)} in {seen.path}, {json.dumps(job.greater_is_better)} in "
                f"{job.path} (a summary without the key reads as true)")
    directions = {key: job.greater_is_better for key, job in first.items()}
    for job in jobs:
        declared = job.summary.get("greater_is_better")
        if isinstance(declared, bool):
            directions.setdefault((job.summary["task"], job.summary["main_metric"]), declared)
    return directions


def extra_keys(jobs: list[Job]) -> list[str]:
    """Override keys that take more than one value inside a single grid cell (seeds aside)."""
    task_metrics = _task_metrics(jobs)
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for job in jobs:
        cells[_axes(job.summary, task_metrics)].append(override_values(job.overrides))
    keys = sorted({key for members in cells.values() for values in members for key in values})
    return [
        key for key in keys
        if not _is_axis_key(key)
        and any(len({values.get(key) for values in members}) > 1 for members in cells.values())
    ]


def placeable(job: Job) -> bool:
    """Whether the job has a row; a job refused for a target that is no number (a typo in a sweep)
    is only listed as a problem."""
    return (job.summary is not None and job.status != INVALID
            and all(job.summary.get(key) is not None for key in PLACEMENT_KEYS)
            and (not job.summary["do_prune"] or _is_number(job.summary.get("target_sparsity"))))


def _is_number(value) -> bool:
    if value is None:
        return True  # a pruning job that failed before its target was recorded
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def group_jobs(jobs: list[Job]) -> tuple[list[Group], list[str]]:
    """Groups in first-seen order and the extra keys that split them.

    Raises ReportInputError when completed runs of one task disagree on greater_is_better."""
    placed = [job for job in jobs if placeable(job)]
    extras = extra_keys(placed)
    task_metrics = _task_metrics(placed)
    directions = _directions(placed)
    groups: dict[tuple, Group] = {}
    for job in placed:
        values = override_values(job.overrides)
        extra = tuple((key, values.get(key)) for key in extras)
        model, task, main_metric, do_prune, pattern, target = _axes(job.summary, task_metrics)
        group = groups.setdefault((model, task, main_metric, do_prune, pattern, target, extra), Group(
            model, task, job.summary.get("task_family"), main_metric, do_prune, pattern, target, extra,
            directions.get((task, main_metric), True)))
        if job.status != COMPLETED:
            group.unfinished.append(job)
        elif job.summary["seed"] in group.seeds:
            group.duplicates.append(job)
        else:
            group.runs.append(job)
    for group in groups.values():
        # a failed seed that a later run completed (a re-run) no longer counts against its row
        group.unfinished = [job for job in group.unfinished if job.summary.get("seed") not in group.seeds]
    return list(groups.values()), extras


def _dense_partner(sparse: Group, dense_groups: list[Group]) -> tuple[Group | None, str | None]:
    """The dense group of the same model and task whose extra values agree with the sparse one.

    A dense value that is absent (the dense sweep did not set the key) matches anything; among
    several matches the one agreeing on the most keys wins, and a tie is reported, not guessed.
    """
    scored = []
    for dense in dense_groups:
        if (dense.model, dense.task, dense.main_metric) != (sparse.model, sparse.task, sparse.main_metric):
            continue
        pairs = list(zip((v for _, v in dense.extras), (v for _, v in sparse.extras)))
        if all(d is None or d == s for d, s in pairs):
            scored.append((sum(d is not None for d, _ in pairs), dense))
    if not scored:
        return None, "no dense run (do_prune=false) for this model and task"
    best = max(score for score, _ in scored)
    winners = [dense for score, dense in scored if score == best]
    if len(winners) > 1:
        return None, f"no dense run: {len(winners)} dense groups match equally"
    return winners[0], None


def build_rows(groups: list[Group]) -> list[Row]:
    """Rows sorted by model, task, extras (first-seen order), pattern, then target sparsity."""
    dense_groups = [group for group in groups if not group.do_prune]
    rows, used = [], set()
    for sparse in (group for group in groups if group.do_prune):
        dense, note = _dense_partner(sparse, dense_groups)
        if dense is not None:
            used.add(id(dense))
        rows.append(Row(sparse, dense, note))
    rows += [Row(None, dense) for dense in dense_groups if id(dense) not in used]

    fields = ("model", "task", "extras", "pattern")
    first_seen: dict[str, dict] = {name: {} for name in fields}
    for group in groups:
        for name in fields:
            first_seen[name].setdefault(getattr(group, name), len(first_seen[name]))

    def order(row: Row) -> tuple:
        group = row.main
        rank = [first_seen[name][getattr(group, name)] for name in fields]
        return (*rank[:3], row.sparse is not None, rank[3], group.target_sparsity or 0.0)

    return sorted(rows, key=order)
