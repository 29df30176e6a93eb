"""CLI: ``python -m prunelab.report <sweep dir> [more dirs] [--out DIR] [--no-plots]``."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from prunelab.report.build import build_report
from prunelab.report.jobs import COMPLETED, ReportInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prunelab.report",
        description="Tabulate and plot the jobs of one or more prunelab sweeps (multirun/<date>/<time>).")
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep dirs, parents of sweep dirs, or job dirs")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: first sweep dir)")
    parser.add_argument("--no-plots", action="store_true", help="write only results.md and results.csv")
    # One line, as for every other bad input, instead of argparse's usage block.
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.sweep_dirs, args.out, plots=not args.no_plots)
    except ReportInputError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)  # argparse's own form for its errors
        return 2
    counts = Counter(job.status for job in report.jobs)
    print(f"{len(report.jobs)} jobs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    if counts[COMPLETED] < len(report.jobs):
        print(f"warning: {len(report.jobs) - counts[COMPLETED]} jobs did not complete; "
              f"see 'Failed, running and missing jobs' in {report.markdown}")
    for path in (report.markdown, report.csv, *report.plots):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
