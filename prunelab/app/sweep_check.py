"""A sweep refused before its first job when one of its overrides would have no effect in every
job (``schema.check_inert_overrides``): ``-m do_prune=false pattern=4x1,2:4`` would train the same
dense model twice. :class:`CheckSweep` is a Hydra callback named in ``conf/config.yaml``.
"""
from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunelab.app.schema import check_inert_overrides
from prunelab.errors import ConfigError, SweepRefused


class CheckSweep(Callback):
    """Hydra callback: ``SweepRefused`` for an inert override of the sweep about to start."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # config: composed from the fixed overrides; hydra.overrides.task: all of them, as typed
        try:
            check_inert_overrides(config, list(config.hydra.overrides.task))
        except ConfigError as error:
            raise SweepRefused(str(error)) from None
