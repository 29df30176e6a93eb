"""From a torch model to an int8 OpenVINO graph, one function per approach.

``dynamic`` and ``static`` work on a CPU copy of the model (the caller's model is never touched);
``qat`` exports the model prepared with ``prepare_qat`` as trained (also from a copy).
Each returns ``(openvino.Model, int8 Linear names, int8 embedding table names)``. With
``embeddings`` the tables are rounded per row onto the int8 weight grid (``FakeQuantEmbedding``).
Before tracing, every rounded weight of the copy is frozen to int8 codes + float32 row scales
(``freeze_int8``): the graph stores torch's own codes as int8 constants and dequantizes them
(Convert -> Multiply) right before the MatMul or Gather.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.quant import backend
from prunelab.quant.config import TARGET_KEYS
from prunelab.quant.modules import freeze_int8
from prunelab.quant.qat import (
    attach_fake_quant,
    attach_fake_quant_embeddings,
    conv1d_as_linear,
    fake_quant_embeddings,
    fake_quant_modules,
)


def model_inputs(batch: Mapping, key: str = "batch") -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` the model takes (training targets dropped), on the CPU."""
    if not isinstance(batch, Mapping):
        raise ConfigError(f"{key}: expected a mapping of input name -> tensor (a tokenizer batch), got {type(batch).__name__}")
    inputs = {}
    for name, value in batch.items():
        if name in TARGET_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"{key}[{name!r}]: expected a tensor, got {type(value).__name__}")
        inputs[name] = value.detach().cpu()
    if not inputs:
        raise ConfigError(f"{key}: has no model input (only {sorted(batch)})")
    return inputs


def take_samples(batches: Iterable[Mapping], limit: int | None) -> list[dict[str, torch.Tensor]]:
    """Input batches holding ``limit`` examples in all (the last one cut), or every batch."""
    taken, count = [], 0
    for index, batch in enumerate(batches):
        if limit is not None and count >= limit:
            break
        inputs = model_inputs(batch, f"calibration_batches[{index}]")
        size = next(iter(inputs.values())).shape[0]
        if limit is not None and count + size > limit:
            inputs = {name: tensor[: limit - count] for name, tensor in inputs.items()}
            size = limit - count
        taken.append(inputs)
        count += size
    return taken


def _cpu_copy(model: nn.Module) -> nn.Module:
    work = copy.deepcopy(model).cpu().eval()
    conv1d_as_linear(work)
    return work


def _tables(work: nn.Module, embeddings: bool) -> list[str]:
    return attach_fake_quant_embeddings(work) if embeddings else []


def _freeze(work: nn.Module) -> None:
    """int8 codes + scales as buffers of the copy (exact, and no re-rounding per forward)."""
    for _, module in [*fake_quant_modules(work), *fake_quant_embeddings(work)]:
        freeze_int8(module)


def dynamic(model: nn.Module, example: Mapping[str, torch.Tensor], op_names, excluded_op_names, embeddings: bool = True):
    """int8 weights; the CPU plugin quantizes each Linear's input at run time."""
    work = _cpu_copy(model)
    names = attach_fake_quant(work, quantize_inputs=False, observer="off", op_names=op_names, excluded_op_names=excluded_op_names)
    tables = _tables(work, embeddings)
    _freeze(work)
    return backend.convert(work, example), names, tables


def static(
    model: nn.Module, calibration: list[dict[str, torch.Tensor]], op_names, excluded_op_names, embeddings: bool = True
):
    """int8 weights and inputs; input ranges are the min/max over the calibration batches
    (measured with the int8 embedding tables, i.e. on what the int8 model will see)."""
    work = _cpu_copy(model)
    names = attach_fake_quant(
        work, quantize_inputs=True, observer="minmax", op_names=op_names, excluded_op_names=excluded_op_names
    )
    tables = _tables(work, embeddings)
    _freeze(work)
    with torch.no_grad():
        for inputs in calibration:
            work(**inputs)
    unseen = [name for name, module in fake_quant_modules(work) if not module.has_input_range()]
    if unseen:
        raise ConfigError(f"calibration_batches: the calibration forward passes never reached {unseen[:5]}")
    for _, module in fake_quant_modules(work):
        module.observer = "off"
    return backend.convert(work, calibration[0]), names, tables


def qat(model: nn.Module, example: Mapping[str, torch.Tensor], embeddings: bool = True):
    """The QAT model as trained: int8 weights, inputs on the ranges learned in training, embedding
    tables as trained (int8 when ``prepare_qat(embeddings=True)``, the default). With
    ``embeddings``, tables trained in float32 (``prepare_qat(embeddings=False)``) are rounded now."""
    modules = fake_quant_modules(model)
    if not modules:
        raise ConfigError("approach='qat': the model was not prepared with prepare_qat(model) before fine-tuning")
    if not embeddings and fake_quant_embeddings(model):
        raise ConfigError(
            "embeddings=False: the model was prepared with prepare_qat(embeddings=True) and trained with int8 embedding "
            "tables; call prepare_qat(model, embeddings=False) before fine-tuning to keep them float32"
        )
    unseen = [name for name, module in modules if not module.has_input_range()]
    if unseen:
        raise ConfigError(
            f"approach='qat': {len(unseen)} layer(s) never saw a training forward pass, so they have no input range "
            f"(first: {unseen[0]}); train at least one step after prepare_qat(model)"
        )
    work = _cpu_copy(model)
    tables = _tables(work, embeddings)
    _freeze(work)
    return backend.convert(work, example), [name for name, _ in modules], tables

