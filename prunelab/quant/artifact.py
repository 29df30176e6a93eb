"""``QuantizedModel``: run an int8 model like the HF model it came from; save it whole or not at
all; load it anywhere OpenVINO is installed (no torch model, no transformers needed).

A saved model is a directory::

    model.xml, model.bin     the OpenVINO graph and its constants (int8 Linear weights and
                             embedding tables, float32 scales, LayerNorm and biases)
    quantization.json        format, approach, input/output names, quantized layers and
                             embedding tables, compile settings
"""
from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from prunelab.errors import ConfigError
from prunelab.quant import backend
from prunelab.quant.config import TARGET_KEYS, check_num_threads

FORMAT = "prunelab.quant/1"
MODEL_FILE, WEIGHTS_FILE, META_FILE = "model.xml", "model.bin", "quantization.json"
FILES = (MODEL_FILE, WEIGHTS_FILE, META_FILE)


class QuantizedOutput(dict):
    """Outputs by name (``logits``; ``start_logits``/``end_logits`` for QA), also as attributes,
    so code written for HF outputs (``out.logits``, ``getattr(out, "loss", None)``) works."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class QuantizedModel:
    """A compiled int8 model. Call it like the HF model (``model(**batch).logits``) or use
    ``predict(batch)``; batches may carry ``labels`` (ignored), not other unknown keys."""

    def __init__(
        self,
        ov_model,
        *,
        approach: str,
        quantized_layers,
        quantized_embeddings=(),
        num_threads: int | None = None,
        compile_config=None,
        directory=None,
    ):
        self.ov_model = ov_model
        self.approach = approach
        self.quantized_layers = tuple(quantized_layers)
        self.quantized_embeddings = tuple(quantized_embeddings)
        self.num_threads = check_num_threads(num_threads)
        # A loaded model compiles with the settings it was saved with (same kernels, same numbers).
        self.compile_config = dict(compile_config) if compile_config is not None else backend.compile_config(approach, None)
        self.input_names = tuple(port.get_any_name() for port in ov_model.inputs)
        self.output_names = tuple(_output_name(port, i) for i, port in enumerate(ov_model.outputs))
        config = dict(self.compile_config)
        if self.num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.num_threads
        self._compiled = backend.compile_model(ov_model, config)
        self._directory = None if directory is None else Path(directory)
        self._size: int | None = None

    # ------------------------------------------------------------------------------ running
    def predict(self, batch: Mapping) -> QuantizedOutput:
        """Outputs for one batch (a mapping of input name -> tensor or array) as CPU tensors."""
        feed = self._feed(batch)
        results = self._compiled(feed)
        return QuantizedOutput(
            (name, torch.from_numpy(np.array(results[port]))) for name, port in zip(self.output_names, self._compiled.outputs)
        )

    def __call__(self, **batch) -> QuantizedOutput:
        return self.predict(batch)

    def eval(self) -> "QuantizedModel":
        """No-op, so evaluation loops written for torch models (``model.eval()``) accept it."""
        return self

    def _feed(self, batch: Mapping) -> dict[str, np.ndarray]:
        if not isinstance(batch, Mapping):
            raise ConfigError(f"batch: expected a mapping of input name -> tensor, got {type(batch).__name__}")
        unknown = [key for key in batch if key not in self.input_names and key not in TARGET_KEYS]
        if unknown:
            raise ConfigError(
                f"batch[{unknown[0]!r}]: not an input of this quantized model (inputs: {', '.join(self.input_names)}); "
                "quantize with an example_batch that carries every input the model will be given"
            )
        missing = [name for name in self.input_names if name not in batch]
        if missing:
            raise ConfigError(f"batch[{missing[0]!r}]: missing; this quantized model takes {', '.join(self.input_names)}")
        return {name: _numpy(batch[name]) for name in self.input_names}

    # ---------------------------------------------------------------------------- artifacts
    def save(self, directory, *, overwrite: bool = False) -> Path:
        """Write the model to ``directory`` whole or not at all (a temporary sibling directory
        renamed into place). An existing non-empty ``directory`` raises ``FileExistsError``
        unless ``overwrite``; then it is replaced (never left half-written)."""
        target = Path(directory)
        occupied = target.exists() and (not target.is_dir() or any(target.iterdir()))
        if occupied and not overwrite:
            raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self._write(staging)
            if occupied:
                retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                target.rename(retired)
                staging.rename(target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(target)  # also replaces an empty directory (POSIX rename)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._directory = target
        return target

    def _write(self, directory: Path) -> None:
        ov = backend.openvino()
        # compress_to_fp16=False: the float parts (scales, LayerNorm, biases, and embedding
        # tables kept float with embeddings=False) stay float32, so a reloaded model gives
        # bit-identical outputs.
        ov.save_model(self.ov_model, str(directory / MODEL_FILE), compress_to_fp16=False)
        meta = {
            "format": FORMAT,
            "approach": self.approach,
            "inputs": list(self.input_names),
            "outputs": list(self.output_names),
            "quantized_layers": list(self.quantized_layers),
            "quantized_embeddings": list(self.quantized_embeddings),
            "compile_config": self.compile_config,
            "openvino_version": ov.__version__,
            "torch_version": torch.__version__,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of what ``save`` writes (``model.xml`` + ``model.bin`` +
        ``quantization.json``): read from the saved directory, or measured by writing the model
        to a scratch directory once."""
        if self._directory is not None and all((self._directory / name).is_file() for name in FILES):
            return _files_size(self._directory)
        if self._size is None:
            with tempfile.TemporaryDirectory() as scratch:
                self._write(Path(scratch))
                self._size = _files_size(Path(scratch))
        return self._size

    def int8_weights(self) -> dict[str, np.ndarray]:
        """``{Linear module name: int8 codes [out, in]}`` as stored in the graph."""
        return _module_names(backend.int8_weights(self.ov_model), self.quantized_layers)

    def int8_embeddings(self) -> dict[str, np.ndarray]:
        """``{embedding module name: int8 codes [num_embeddings, dim]}`` as stored in the graph
        (empty when quantized with ``embeddings=False``)."""
        return _module_names(backend.int8_embeddings(self.ov_model), self.quantized_embeddings)

    def __repr__(self) -> str:
        return (
            f"QuantizedModel(approach={self.approach!r}, int8 layers={len(self.quantized_layers)}, "
            f"int8 embedding tables={len(self.quantized_embeddings)}, "
            f"inputs={list(self.input_names)}, outputs={list(self.output_names)})"
        )


def _module_names(found: dict[str, np.ndarray], modules) -> dict[str, np.ndarray]:
    """The graph names a layer by the tracer's path, which can start with a wrapper's attribute
    (GPT-2's: ``model.transformer.h.0...``): each name becomes the module name it ends with."""
    known = set(modules)
    renamed = {}
    for name, codes in found.items():
        parts = name.split(".")
        suffixes = (".".join(parts[i:]) for i in range(len(parts)))
        renamed[next((suffix for suffix in suffixes if suffix in known), name)] = codes
    return renamed


def load_quantized(directory, *, num_threads: int | None = None) -> QuantizedModel:
    """Load a model written by ``QuantizedModel.save`` (any process; needs only OpenVINO)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file() or not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no saved quantized model ({META_FILE} and {MODEL_FILE} expected)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    ov_model = backend.core().read_model(str(directory / MODEL_FILE))
    return QuantizedModel(
        ov_model,
        approach=meta["approach"],
        quantized_layers=meta["quantized_layers"],
        quantized_embeddings=meta.get("quantized_embeddings", ()),  # absent in files saved before int8 tables
        num_threads=num_threads,
        compile_config=meta["compile_config"],
        directory=directory,
    )


def _output_name(port, index: int) -> str:
    names = port.get_names()
    return port.get_any_name() if names else f"output_{index}"


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _files_size(directory: Path) -> int:
    return sum((directory / name).stat().st_size for name in FILES)
