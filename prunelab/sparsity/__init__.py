"""The pruning engine: INC-style configs, hook-driven masks, measured reports. Imports torch only.

    pruning = prepare_pruning(model, {"target_sparsity": 0.8, "pattern": "4x1", ...})

Modules: ``config`` (keys and validation), ``ops`` (which modules, seen as [out, in]),
``patterns`` (units and masks), ``criteria`` (scores), ``schedules`` (sparsity per step),
``selection`` (exact lowest-k), ``pruner`` (one group of ops), ``coupling`` (which modules hold a
head or an FFN neuron, per architecture), ``coupled`` (a group of heads or neurons), ``api`` (hooks,
checkpoint, ``kept_units``), ``measure`` (the report).
"""
from prunelab.sparsity.api import Pruning, prepare_pruning
from prunelab.sparsity.config import GroupConfig, PruningConfig, calibration_steps, parse_config

__all__ = ["GroupConfig", "Pruning", "PruningConfig", "calibration_steps", "parse_config", "prepare_pruning"]
