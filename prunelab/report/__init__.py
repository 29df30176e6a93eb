"""Turn Hydra sweeps of prunelab runs into a results table (Markdown + CSV) and plots.

    python -m prunelab.report multirun/<date>/<time> [more sweep dirs] [--out DIR]

or from Python: ``prunelab.report.build_report([sweep_dir])``.
"""
from prunelab.report.build import Report, build_report

__all__ = ["Report", "build_report"]
