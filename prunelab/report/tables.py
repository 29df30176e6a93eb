"""Render rows as the reference results table (Markdown) and as a flat CSV.

Metric cells read ``mean / best`` over seeds, where best is the largest value or, for a task that
declares lower better (perplexity), the smallest; such a metric's section says "lower is better".
The CSV names these columns ``*_best`` (``dense_best``, ``sparse_best``, ``int8_best``; ``*_max``
until summaries carried ``greater_is_better``: a column called max that held a minimum would be
read wrong without an error) and has a ``greater_is_better`` column beside ``metric``.
"""
from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

from prunelab.report.grouping import Group, Row
from prunelab.report.jobs import COMPLETED, Job

RATIO_COLUMN = "Element-wise/matmul, Gemm, conv ratio"
# The CSV's columns; a row's extra grouping keys go between these two lists.
KEY_COLUMNS = ["model", "task", "task_family", "metric", "greater_is_better"]
VALUE_COLUMNS = [
    "pattern", "target_sparsity", "linear_conv_sparsity", "pruned_ops_sparsity",
    "dense_mean", "dense_best", "dense_n", "dense_seeds", "dense_not_completed",
    "sparse_mean", "sparse_best", "sparse_n", "sparse_seeds", "sparse_not_completed",
    "relative_drop_pct", "int8_mean", "int8_best", "int8_n", "note",
]


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _not_completed(group: Group) -> str:
    counts = Counter(job.status for job in group.unfinished)
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))


def metric_cell(group: Group | None, missing_note: str) -> str:
    """``mean / best (n=3)``, e.g. ``0.8123 / 0.8260 (n=3)``, with the runs that did not complete
    named beside it."""
    if group is None:
        return missing_note
    problems = _not_completed(group)
    if not group.runs:
        return f"no completed run ({problems})"
    cell = f"{group.mean:.4f} / {group.best:.4f} (n={group.n}"
    return cell + (f"; {problems})" if problems else ")")


def int8_cell(group: Group) -> str:
    """The int8 models' metric, ``mean / best (n=..)``, or a dash where no run quantized."""
    values = group.int8
    return f"{sum(values) / len(values):.4f} / {group.best_of(values):.4f} (n={len(values)})" if values else "—"


def _ratio_cell(row: Row) -> str:
    measured = _number(row.main.sparsity_mean("linear_conv_sparsity")) or "n/a"
    if row.sparse is None or row.sparse.target_sparsity is None:
        return measured
    return f"{measured} (target {row.sparse.target_sparsity:g})"


def _drop_cell(row: Row) -> str:
    drop = row.relative_drop_pct
    return "—" if math.isnan(drop) else f"{drop:+.2f}%"


def _markdown_table(rows: list[Row], metric: str, extras: list[str]) -> list[str]:
    quantized = any(row.main.int8 for row in rows)
    header = ["Model", "Dataset", *extras, "Sparsity pattern", RATIO_COLUMN,
              f"Dense {metric} (mean / best)", f"Sparse {metric} (mean / best)", "Relative drop",
              *([f"int8 {metric} (mean / best)"] if quantized else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        group = row.main
        cells = [group.model, group.task, *(value if value is not None else "(default)" for _, value in group.extras),
                 group.pattern if row.sparse else "dense", _ratio_cell(row),
                 metric_cell(row.dense, row.dense_note or "—"),
                 metric_cell(row.sparse, "— (dense only)"), _drop_cell(row),
                 *([int8_cell(group)] if quantized else [])]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return lines


def _job_line(job: Job) -> str:
    overrides = " ".join(job.overrides) or "(none)"
    error = (job.error or "").replace("|", "\\|").replace("\n", " ")
    return f"| {job.status} | `{job.path}` | `{overrides}` | {error} |"


def render_markdown(rows: list[Row], extras: list[str], jobs: list[Job], roots: list[Path],
                    plots: list[Path]) -> str:
    """The whole results.md: one table per metric, plots, then every job that did not complete."""
    counts = Counter(job.status for job in jobs)
    lines = ["# Sweep results", "",
             "Sweeps: " + ", ".join(f"`{root}`" for root in roots),
             f"Jobs: {len(jobs)} (" + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ")", ""]
    # one table per metric and direction: a best or a drop means the opposite in the other
    for metric, greater_is_better in dict.fromkeys((row.main.metric_name, row.main.greater_is_better) for row in rows):
        lines += [f"## {metric}" + ("" if greater_is_better else " (lower is better)"), ""]
        lines += _markdown_table([row for row in rows if (row.main.metric_name, row.main.greater_is_better)
                                  == (metric, greater_is_better)], metric, extras)
        lines.append("")
    lines += [
        "Metric cells: mean / best over seeds (best: the highest, or the lowest where lower is better), "
        "n = completed seeds. "
        f"{RATIO_COLUMN}: measured zeros over all Linear/Conv weights (excluded ops included), "
        "mean over seeds, the configured target in parentheses. "
        "Relative drop = (dense mean - sparse mean) / |dense mean|, or (sparse mean - dense mean) / |dense mean| "
        "where lower is better: positive means the sparse model is worse "
        "(INC's tables print the accuracy ratio with the opposite sign). "
        "int8 (runs with quant=...): the int8 model of the row's sparse runs (dense-only rows: of the dense runs), "
        "evaluated on the same eval set.",
        "",
    ]
    if plots:
        lines += ["## Plots", ""] + [f"![{plot.stem}]({plot.name})" for plot in plots] + [""]
    # a dense group shared by several sparse rows is visited once per row: dedupe by path
    duplicates = list(dict.fromkeys(
        job.path for row in rows for group in (row.sparse, row.dense) if group for job in group.duplicates))
    if duplicates:
        lines += ["## Duplicate seeds not counted", "",
                  "These completed runs repeat a seed already counted in their row (for example dense runs "
                  "swept once per pattern); the first run in sweep order is used:", ""]
        lines += [f"- `{path}`" for path in duplicates] + [""]
    problems = [job for job in jobs if job.status != COMPLETED]
    lines += ["## Failed, running and missing jobs", ""]
    if problems:
        lines += ["| Status | Job dir | Overrides | Error |", "|---|---|---|---|"]
        lines += [_job_line(job) for job in problems]
    else:
        lines.append("None: every job completed.")
    return "\n".join(lines) + "\n"


def _group_fields(group: Group | None, prefix: str) -> dict:
    if group is None:
        return {}
    return {f"{prefix}_mean": _number(group.mean, 6), f"{prefix}_best": _number(group.best, 6),
            f"{prefix}_n": group.n, f"{prefix}_seeds": " ".join(map(str, sorted(group.seeds))),
            f"{prefix}_not_completed": _not_completed(group)}


def write_csv(rows: list[Row], extras: list[str], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=KEY_COLUMNS + extras + VALUE_COLUMNS)
        writer.writeheader()
        for row in rows:
            group = row.main
            writer.writerow({
                "model": group.model, "task": group.task, "task_family": group.task_family or "",
                "metric": group.metric_name, "greater_is_better": group.greater_is_better, **dict(group.extras),
                "pattern": group.pattern if row.sparse else "dense",
                "target_sparsity": "" if group.target_sparsity is None else group.target_sparsity,
                "linear_conv_sparsity": _number(group.sparsity_mean("linear_conv_sparsity"), 6),
                "pruned_ops_sparsity": _number(group.sparsity_mean("pruned_ops_sparsity"), 6),
                **_group_fields(row.dense, "dense"), **_group_fields(row.sparse, "sparse"),
                "relative_drop_pct": _number(row.relative_drop_pct, 4),
                "int8_mean": _number(sum(group.int8) / len(group.int8), 6) if group.int8 else "",
                "int8_best": _number(group.best_of(group.int8), 6) if group.int8 else "",
                "int8_n": len(group.int8),
                "note": row.dense_note or "",
            })
