"""The ``quant`` config group: what the run does with ``prunelab.quant``, one class per option.

The stages read what each declares (``enabled``, ``trains``, ``converts_compacted``), never its
name. ``none`` leaves the model float. ``dynamic`` and ``static`` quantize the trained model after
training; ``qat`` fake-quantizes it for the whole fine-tune (set up before the pruning engine and
the optimizer) and converts it to int8 after. The int8 model is evaluated on the same eval set and
saved to ``<run dir>/quantized/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from prunelab import quant
from prunelab.quant import backend
from prunelab.quant.config import check_num_threads
from prunelab.quant.qat import require_linears
from prunelab.errors import ConfigError

QUANTIZED_DIR = "quantized"
# Reloaded int8 logits must equal the in-memory model's to this: the same OpenVINO graph compiled
# again runs the same int8 kernels; only the order of float accumulations across threads may move
# the last bits (seen: exact equality on this CPU).
VERIFY_ATOL = 1e-5


@dataclass
class NoQuantization:
    """quant=none: the model stays float."""

    enabled = False  # makes an int8 model
    trains = False  # changes training (fake quantization from the first step)
    converts_compacted = False  # can make the int8 model of a compacted export
    approach = "none"

    def prepare(self, model: torch.nn.Module) -> None:
        """Nothing to set up."""

    def release(self, model: torch.nn.Module) -> None:
        """Nothing to take off."""


@dataclass
class _AfterTraining:
    """Post-training int8 (dynamic, static): op_names / excluded_op_names: regexes of the Linear
    layers made int8 (default: every Linear); num_threads: CPU threads of the int8 model (null:
    OpenVINO's default)."""

    op_names: list[str] = field(default_factory=list)
    excluded_op_names: list[str] = field(default_factory=list)
    num_threads: int | None = None

    enabled = True
    trains = False
    converts_compacted = True  # any float model, the compacted one too
    approach = ""  # prunelab.quant's name of the approach

    def __post_init__(self):
        _check_threads_and_backend(self.num_threads, self.approach)

    def prepare(self, model: torch.nn.Module) -> None:
        """Before training: the layer choice checked now, not after training."""
        require_linears(model, self.op_names, self.excluded_op_names, key_prefix="quant.")

    def convert(self, model: torch.nn.Module, calibration: DataLoader) -> quant.QuantizedModel:
        """The int8 model; ``calibration`` yields training batches in a fixed order."""
        return quant.quantize(model, self.approach, None, example_batch=next(iter(calibration)),
                              num_threads=self.num_threads, op_names=self.op_names, excluded_op_names=self.excluded_op_names)

    def release(self, model: torch.nn.Module) -> None:
        """Nothing to take off: training ran on the float model."""


@dataclass
class DynamicQuantization(_AfterTraining):
    """quant=dynamic: int8 weights; Linear inputs quantized at run time."""

    approach = "dynamic"


@dataclass
class StaticQuantization(_AfterTraining):
    """quant=static: int8 weights and inputs, input ranges calibrated on the first
    ``num_calibration_samples`` training examples."""

    num_calibration_samples: int = 256

    approach = "static"

    def __post_init__(self):
        if self.num_calibration_samples <= 0:
            raise ConfigError(
                f"quant.num_calibration_samples={self.num_calibration_samples}: static quantization needs a "
                "positive number of training examples to calibrate on"
            )
        super().__post_init__()

    def convert(self, model: torch.nn.Module, calibration: DataLoader) -> quant.QuantizedModel:
        return quant.quantize(model, self.approach, islice(calibration, None),
                              num_calibration_samples=self.num_calibration_samples, num_threads=self.num_threads,
                              op_names=self.op_names, excluded_op_names=self.excluded_op_names)


@dataclass
class QuantizationAwareTraining:
    """quant=qat: fake quantization of the chosen Linear layers for the whole fine-tune (set up
    before the pruning engine and the optimizer), converted to int8 after it. Its int8 ranges are
    learnt in the layers as trained, so a compacted export is not re-quantized."""

    op_names: list[str] = field(default_factory=list)
    excluded_op_names: list[str] = field(default_factory=list)
    num_threads: int | None = None

    enabled = True
    trains = True
    converts_compacted = False
    approach = "qat"

    def __post_init__(self):
        _check_threads_and_backend(self.num_threads, self.approach)

    def prepare(self, model: torch.nn.Module) -> None:
        require_linears(model, self.op_names, self.excluded_op_names, key_prefix="quant.")
        quant.prepare_qat(model, op_names=self.op_names, excluded_op_names=self.excluded_op_names)

    def convert(self, model: torch.nn.Module, calibration: DataLoader) -> quant.QuantizedModel:
        return quant.quantize(model, self.approach, None, example_batch=next(iter(calibration)), num_threads=self.num_threads)

    def release(self, model: torch.nn.Module) -> None:
        """After conversion: plain Linear layers again, so the float model saves as a stock one."""
        quant.strip_qat(model)


def _check_threads_and_backend(num_threads: int | None, approach: str) -> None:
    try:
        check_num_threads(num_threads)
    except ConfigError as error:
        raise ConfigError(f"quant.{error}") from None
    try:
        backend.check_backend_can(approach)
    except ImportError as error:
        raise ConfigError(f"quant={approach}: {error}") from None


def check_reload(directory: Path, quantized: quant.QuantizedModel, batches) -> None:
    """``verify_loading`` for ``quantized/``: reload it and compare logits on ``batches``."""
    reloaded = quant.load_quantized(directory, num_threads=quantized.num_threads)
    for batch in batches:
        for name, value in quantized(**batch).items():
            gap = float(np.max(np.abs(np.asarray(reloaded(**batch)[name]) - np.asarray(value))))
            if gap > VERIFY_ATOL:
                raise RuntimeError(
                    f"verify_loading: the reloaded int8 model's {name} differ from the in-memory one's "
                    f"(max |diff| {gap:.2e}); left in {directory}"
                )
