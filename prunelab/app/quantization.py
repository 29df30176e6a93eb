"""The ``quant`` config group: what the run does with ``prunelab.quant``.

``none`` leaves the model float. ``dynamic`` and ``static`` quantize the trained model after
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
class Quantization:
    """approach: none | dynamic | static | qat; num_calibration_samples: training examples whose
    activations set the int8 input ranges (static only); op_names / excluded_op_names: regexes of
    the Linear layers made int8 (default: every Linear); num_threads: CPU threads of the int8
    model (null: OpenVINO's default)."""

    approach: str = "none"
    num_calibration_samples: int | None = None
    op_names: list[str] = field(default_factory=list)
    excluded_op_names: list[str] = field(default_factory=list)
    num_threads: int | None = None

    def __post_init__(self):
        allowed = ("none", *quant.APPROACHES)
        if self.approach not in allowed:
            raise ConfigError(f"quant.approach={self.approach}: allowed {', '.join(allowed)}")
        if self.approach == "static":
            if self.num_calibration_samples is None or self.num_calibration_samples <= 0:
                raise ConfigError(
                    f"quant.num_calibration_samples={self.num_calibration_samples}: static quantization needs a "
                    "positive number of training examples to calibrate on"
                )
        elif self.num_calibration_samples is not None:
            raise ConfigError(
                f"quant.num_calibration_samples={self.num_calibration_samples}: has no effect with "
                f"quant={self.approach} (only static calibrates)"
            )
        try:
            check_num_threads(self.num_threads)
        except ConfigError as error:
            raise ConfigError(f"quant.{error}") from None
        if self.approach == "none" and (self.op_names or self.excluded_op_names or self.num_threads):
            raise ConfigError("quant.op_names / excluded_op_names / num_threads: have no effect with quant=none")
        if self.enabled:
            try:
                backend.check_backend_can(self.approach)
            except ImportError as error:
                raise ConfigError(f"quant={self.approach}: {error}") from None

    @property
    def enabled(self) -> bool:
        return self.approach != "none"

    def prepare(self, model: torch.nn.Module) -> None:
        """Before the pruning engine and the optimizer: the layer choice checked now, not after
        training; fake quantization for ``qat``."""
        if not self.enabled:
            return
        require_linears(model, self.op_names, self.excluded_op_names, key_prefix="quant.")
        if self.approach == "qat":
            quant.prepare_qat(model, op_names=self.op_names, excluded_op_names=self.excluded_op_names)

    def convert(self, model: torch.nn.Module, calibration: DataLoader) -> quant.QuantizedModel:
        """The int8 model; ``calibration`` yields training batches in a fixed order."""
        batches = islice(calibration, None) if self.approach == "static" else None
        layers = {} if self.approach == "qat" else {"op_names": self.op_names, "excluded_op_names": self.excluded_op_names}
        return quant.quantize(
            model, self.approach, batches, num_calibration_samples=self.num_calibration_samples,
            example_batch=None if batches is not None else next(iter(calibration)), num_threads=self.num_threads,
            **layers,
        )

    def release(self, model: torch.nn.Module) -> None:
        """After conversion: plain Linear layers again, so the float model saves as a stock one."""
        if self.approach == "qat":
            quant.strip_qat(model)


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
