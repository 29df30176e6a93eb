"""Everything that touches OpenVINO: import, conversion of a traced torch model, compile settings,
and reading the int8 weights back out of a graph. The rest of ``prunelab.quant`` is torch only."""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from prunelab.errors import ConfigError

OPENVINO_PIN = "openvino==2026.4.1"
# OpenVINO's CPU plugin quantizes a FullyConnected's input at run time, per group of this many
# input channels, when the weights are int8 (measured: 1.5x over the same graph without it).
DYNAMIC_GROUP_SIZE = 32


def openvino():
    try:
        import openvino as ov
    except ImportError as error:  # pragma: no cover - exercised only without the dependency
        raise ImportError(f"prunelab.quant needs OpenVINO to convert and run int8 models: pip install {OPENVINO_PIN}") from error
    return ov


_CORE = None


def core():
    global _CORE
    if _CORE is None:
        _CORE = openvino().Core()
    return _CORE


def compile_config(approach: str, num_threads: int | None) -> dict:
    """Compile settings stored with the model so a reload runs the same kernels."""
    config = {
        # f32, never the bf16 default of CPUs with AMX/AVX512-BF16: int8 layers are int8 either
        # way, the rest stays float32 so results do not depend on the machine.
        "INFERENCE_PRECISION_HINT": "f32",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": DYNAMIC_GROUP_SIZE if approach == "dynamic" else 0,
    }
    if num_threads is not None:
        config["INFERENCE_NUM_THREADS"] = num_threads
    return config


def check_backend_can(approach: str) -> None:
    """Refuse an approach this machine's OpenVINO CPU plugin cannot run."""
    supported = core().get_property("CPU", "SUPPORTED_PROPERTIES")
    if approach == "dynamic" and "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in supported:
        raise ConfigError(
            "approach='dynamic': this OpenVINO CPU plugin cannot quantize activations at run time "
            "(no DYNAMIC_QUANTIZATION_GROUP_SIZE); use approach='static'"
        )


def convert(model: nn.Module, example: Mapping[str, torch.Tensor]):
    """Trace ``model`` (eval mode, CPU) into an ``openvino.Model`` with dynamic batch and length.

    Fake-quantized weights become int8 constants (plus per-channel scales); fake-quantized
    inputs become FakeQuantize ops that the CPU plugin fuses into int8 FullyConnected kernels.
    """
    ov = openvino()
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about every Python-level branch; the ones in transformers' masking and in
        # FakeQuantLinear are constant for a given model (tests check other shapes and padding).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(model, example_input=dict(example))


def compile_model(ov_model, config: Mapping):
    """Compiled for the CPU in float32 unless ``config`` says otherwise: OpenVINO's default on CPUs
    with AMX / AVX512-BF16 is bf16, about 1e-2 off the torch logits."""
    return core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **config})


# ------------------------------------------------------------------------------ int8 weights
_MODULE_NAME = re.compile(r"^__module\.(.+?)/aten::linear/")
_EMBEDDING_NAME = re.compile(r"^__module\.(.+?)/aten::embedding/")


def int8_weights(ov_model) -> dict[str, np.ndarray]:
    """``{linear module name: int8 codes [out, in]}`` for every int8 weight feeding a Linear."""
    return _int8_constants(ov_model, "MatMul", _MODULE_NAME)


def int8_embeddings(ov_model) -> dict[str, np.ndarray]:
    """``{embedding module name: int8 codes [num_embeddings, dim]}`` for every int8 table that an
    embedding lookup (Gather) reads."""
    return _int8_constants(ov_model, "Gather", _EMBEDDING_NAME)


def _int8_constants(ov_model, kind: str, pattern: re.Pattern) -> dict[str, np.ndarray]:
    ov = openvino()
    found = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.i8:
            continue
        name = _consumer(op, kind, pattern)
        if name is not None:
            found[name] = op.get_data().copy()
    return found


def _consumer(op, kind: str, pattern: re.Pattern, depth: int = 0) -> str | None:
    """Follow the decompression chain (Convert -> Multiply [-> Reshape/Transpose]) from an int8
    constant to the op of type ``kind`` that reads it (MatMul: a Linear's weight; Gather: an
    embedding's table, its data input); that op's friendly name gives the module's name. The walk
    stops at the first MatMul or Gather."""
    if depth > 6:
        return None
    for target in op.output(0).get_target_inputs():
        node = target.get_node()
        if node.get_type_name() in ("MatMul", "Gather"):
            match = pattern.match(node.get_friendly_name())
            if node.get_type_name() == kind and match and (kind == "MatMul" or target.get_index() == 0):
                return match.group(1)
            continue
        name = _consumer(node, kind, pattern, depth + 1)
        if name is not None:
            return name
    return None
