"""Export backends: the runtimes ``export_run`` writes the compacted model for, checks and times.

Each backend is one ``Backend`` class; ``BACKENDS`` below is the one place that maps a name
(``export.backends``, ``--backends``) to its class. ``export_run`` calls, for every listed backend,
``save`` (its files in the export directory), then ``load`` (what it wrote, read back), checks
the loaded model's outputs against the saved (masked) model and times it beside torch dense.
Adding a backend: docs/compaction.md, "Adding an export backend".
"""
from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from prunelab.export.onnx_export import export_onnx, ort_session, run_ort
from prunelab.export.storage import WEIGHT_FILES, load_compacted, save_compacted

# One batch of inputs (name -> tensor) in; outputs out, in the model's order: a ModelOutput or a
# mapping of tensors, or a sequence of arrays (onnx_export.as_arrays reads each).
Runner = Callable[[dict[str, torch.Tensor]], Any]
NOT_COPIED = {"config.json", "generation_config.json", *WEIGHT_FILES}  # what save_compacted writes itself


@dataclass(frozen=True)
class Settings:
    """What a backend may read beside the model: the saved model's directory (files that travel
    with the weights, e.g. the tokenizer), CPU threads for running, the ONNX exporter."""

    source: Path
    threads: int = 2
    exporter: str = "dynamo"


class Backend(ABC):
    """One runtime of the compacted model. A subclass declares the class attributes and writes
    ``save`` and ``load``; ``export_run`` does the checking, timing and reporting."""

    name: ClassVar[str]  # its entry in export.backends / --backends
    record_key: ClassVar[str]  # export.json key of what save returns (null there when not listed)
    # logit_diffs key: its outputs are held to the tolerance. None: they differ by rounding (int8),
    # and the gap is reported as max_abs_logit_diff_to_float in its record (then a dict).
    check_key: ClassVar[str | None]
    latency_key: ClassVar[str]  # latency rows <latency_key>_ms and <latency_key>_ratio (to torch dense)
    # save gets the int8 model of the compacted one (prunelab.quant.QuantizedModel, made by the
    # run's quant=dynamic|static) instead of the float model.
    needs_int8: ClassVar[bool] = False
    # The dense reference runs in this same runtime, so its ratio is what compaction alone gained:
    # speedup_claimed is read from these backends only.
    like_for_like: ClassVar[bool] = False
    packages: ClassVar[tuple[str, ...]] = ()  # what it imports beyond torch/transformers (versions, install hint)

    @abstractmethod
    def save(self, model, out: Path, settings: Settings) -> Any:
        """Write ``model`` into the export directory ``out``; return its export.json record (JSON)."""

    @abstractmethod
    def load(self, out: Path, settings: Settings) -> Runner:
        """What ``save`` wrote, read back and ready to run one batch."""


class TorchBackend(Backend):
    """``model/``: the compacted model as ``save_pretrained`` files, reloaded with ``load_compacted``."""

    name = "torch"
    record_key = "load"
    check_key = "reloaded"
    latency_key = "torch_compacted"
    like_for_like = True
    directory = "model"

    def save(self, model, out: Path, settings: Settings) -> str:
        save_compacted(model, out / self.directory)
        for path in settings.source.iterdir():  # tokenizer files (and anything else that is not weights/config)
            if path.is_file() and path.name not in NOT_COPIED and not path.name.endswith((".safetensors", ".bin")):
                shutil.copy2(path, out / self.directory / path.name)
        return f"prunelab.export.load_compacted('<this dir>/{self.directory}')"

    def load(self, out: Path, settings: Settings) -> Runner:
        model = load_compacted(out / self.directory)
        return lambda inputs: model(**inputs)


class OnnxRuntimeBackend(Backend):
    """``model.onnx`` (``export_onnx``), run in an ONNX Runtime CPU session."""

    name = "onnxruntime"
    record_key = "onnx"
    check_key = "onnxruntime"
    latency_key = "ort_compacted"
    packages = ("onnx", "onnxruntime", "onnxscript")
    file = "model.onnx"

    def save(self, model, out: Path, settings: Settings) -> dict:
        return export_onnx(model, out / self.file, exporter=settings.exporter)

    def load(self, out: Path, settings: Settings) -> Runner:
        # Idle threads sleep at once: spinning ones would take the cores from the next runtime timed.
        session = ort_session(out / self.file, settings.threads, spinning=False)
        return lambda inputs: run_ort(session, inputs)


class OpenVinoBackend(Backend):
    """``quantized/``: the int8 model of the compacted one (OpenVINO IR, ``prunelab.quant.load_quantized``)."""

    name = "openvino"
    record_key = "quantized"
    check_key = None
    latency_key = "int8_compacted"
    needs_int8 = True
    packages = ("openvino",)
    directory = "quantized"

    def save(self, model, out: Path, settings: Settings) -> dict:
        model.save(out / self.directory, overwrite=True)
        return {"approach": model.approach, "dir": self.directory, "size_bytes": model.size_bytes,
                "load": f"prunelab.quant.load_quantized('<this dir>/{self.directory}')"}

    def load(self, out: Path, settings: Settings) -> Runner:
        from prunelab.quant import load_quantized  # OpenVINO loads only with this backend

        model = load_quantized(out / self.directory, num_threads=settings.threads)
        return lambda inputs: model(**inputs)


BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (TorchBackend, OnnxRuntimeBackend, OpenVinoBackend)}


def backend_classes(names) -> list[type[Backend]]:
    """The classes of ``names``, in order; ``ValueError`` (one line naming the allowed names) for
    an unknown or repeated name or none at all."""
    names = list(names)
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise ValueError(f"no backend {unknown[0]!r}; allowed: {', '.join(BACKENDS)}")
    if not names or len(set(names)) < len(names):
        raise ValueError(f"give each backend once, at least one of: {', '.join(BACKENDS)}")
    return [BACKENDS[name] for name in names]
