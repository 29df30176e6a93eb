"""The jobs a sweep was asked to run, recomputed from the ``multirun.yaml`` Hydra saves in its dir.

Comparing this plan with the job dirs on disk finds jobs that never started (a cancelled cluster
array, a sweep killed half-way), which leave no directory to discover.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Hydra's default job subdir; with it, job number i lives in <sweep dir>/<i>
DEFAULT_SUBDIR = "${hydra.job.num}"


@dataclass
class PlannedJob:
    path: Path
    overrides: list[str]


def expected_jobs(sweep_dir: Path) -> list[PlannedJob]:
    """The jobs Hydra's basic sweeper expands ``multirun.yaml`` into, in job-number order.

    Other sweepers (optuna, nevergrad) choose jobs at run time, and glob() sweeps need the app's
    config search path to expand: for those the plan is empty and only job dirs on disk count.
    """
    hydra_cfg = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    if hydra_cfg.sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    params = hydra_cfg.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    # the same order BasicSweeper.sweep uses: preset params first, then the command line
    arguments = [f"{key}={value}" for key, value in params.items()] + list(hydra_cfg.overrides.task)
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    except HydraException:
        return []
    subdir = OmegaConf.to_container(hydra_cfg.sweep, resolve=False).get("subdir")
    return [
        PlannedJob(sweep_dir / str(num) if subdir == DEFAULT_SUBDIR else sweep_dir, list(overrides))
        for num, overrides in enumerate(batches[0])
    ]
