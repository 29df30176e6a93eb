"""Sweep dirs -> results.md, results.csv and PNG plots in one output dir."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunelab.report.grouping import Row, build_rows, group_jobs
from prunelab.report.jobs import Job, ReportInputError, find_jobs
from prunelab.report.plots import write_plots
from prunelab.report.tables import render_markdown, write_csv


@dataclass
class Report:
    """What build_report read and wrote."""

    jobs: list[Job]
    rows: list[Row]
    extras: list[str]
    markdown: Path
    csv: Path
    plots: list[Path]


def build_report(roots: list[Path], out_dir: Path | None = None, plots: bool = True) -> Report:
    """Read every job under ``roots`` and write the report into ``out_dir`` (default: the first root).

    Raises ReportInputError when a root is not a directory or the roots hold no job.
    """
    roots = [Path(root) for root in roots]
    if not roots:
        raise ReportInputError("build_report needs at least one sweep dir")
    jobs = find_jobs(roots)
    groups, extras = group_jobs(jobs)
    rows = build_rows(groups)
    out_dir = Path(out_dir) if out_dir is not None else roots[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_paths = write_plots(rows, out_dir) if plots else []
    markdown = out_dir / "results.md"
    markdown.write_text(render_markdown(rows, extras, jobs, roots, plot_paths))
    csv_path = out_dir / "results.csv"
    write_csv(rows, extras, csv_path)
    return Report(jobs, rows, extras, markdown, csv_path, plot_paths)
