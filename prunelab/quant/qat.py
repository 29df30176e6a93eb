"""Which Linear layers and embedding tables are quantized, and quantization-aware training
set-up and tear-down.

``prepare_qat(model)`` turns the selected ``nn.Linear`` modules into ``FakeQuantLinear`` and the
``nn.Embedding`` tables into ``FakeQuantEmbedding`` in place (same module objects, same
Parameters): fine-tuning then sees int8-rounded weights, inputs and embedding tables.
It works before or after ``prunelab.sparsity.prepare_pruning`` and before or after the optimizer
is built; the documented order is prepare_qat -> prepare_pruning -> optimizer.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.quant.config import check_flag, check_regexes
from prunelab.quant.modules import (
    FakeQuantEmbedding,
    FakeQuantLinear,
    can_fake_quant_embedding,
    restore_embedding,
    restore_linear,
    to_fake_quant,
    to_fake_quant_embedding,
)


def select_linears(
    model: nn.Module, op_names: Sequence[str] = (), excluded_op_names: Sequence[str] = ()
) -> list[tuple[str, nn.Linear]]:
    """``(name, module)`` of every plain ``nn.Linear`` whose name matches (the pruning engine's
    rule: an ``op_names`` regex is found in it, an empty list matches all, and no
    ``excluded_op_names`` regex is)."""
    include = [re.compile(p) for p in check_regexes("op_names", op_names)] or [re.compile("")]
    exclude = [re.compile(p) for p in check_regexes("excluded_op_names", excluded_op_names)]
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and any(p.search(name) for p in include)
        and not any(p.search(name) for p in exclude)
    ]


def conv1d_layers(model: nn.Module) -> list[str]:
    """Names of GPT-2-style ``Conv1D`` layers (a Linear stored ``[in, out]``), recognised by class
    name so this package never imports transformers."""
    return [name for name, module in model.named_modules()
            if any(cls.__name__ == "Conv1D" for cls in type(module).__mro__)
            and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2]


def conv1d_as_linear(model: nn.Module) -> None:
    """Replace every ``Conv1D`` by the ``nn.Linear`` that computes the same (weight transposed), in
    place: on the CPU copy made for conversion, so GPT-2's layers become int8 like any Linear."""
    for name in conv1d_layers(model):
        conv = model.get_submodule(name)
        rows, cols = conv.weight.shape[1], conv.weight.shape[0]
        linear = nn.Linear(cols, rows, bias=conv.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)


def require_linears(
    model: nn.Module, op_names: Sequence[str] = (), excluded_op_names: Sequence[str] = (), key_prefix: str = ""
) -> list[tuple[str, nn.Linear]]:
    """``select_linears``, or ``ConfigError`` when it selects nothing (its keys named with
    ``key_prefix``, e.g. "quant." for the app's config group)."""
    chosen = select_linears(model, op_names, excluded_op_names)
    if not chosen:
        raise ConfigError(
            f"{key_prefix}op_names={list(op_names)}, {key_prefix}excluded_op_names={list(excluded_op_names)}: "
            "no nn.Linear of the model matches, nothing would be quantized"
        )
    return chosen


def fake_quant_modules(model: nn.Module) -> list[tuple[str, FakeQuantLinear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, FakeQuantLinear)]


def fake_quant_embeddings(model: nn.Module) -> list[tuple[str, FakeQuantEmbedding]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, FakeQuantEmbedding)]


def attach_fake_quant_embeddings(model: nn.Module) -> list[str]:
    """Make every plain ``nn.Embedding`` table (word, position, token type, ...) an int8-rounded
    ``FakeQuantEmbedding`` in place; returns the names of all fake-quantized tables (including
    any made so before). Tables with ``max_norm`` or ``sparse`` stay float."""
    for _, module in model.named_modules():
        if can_fake_quant_embedding(module):
            to_fake_quant_embedding(module)
    return [name for name, _ in fake_quant_embeddings(model)]


def attach_fake_quant(
    model: nn.Module,
    *,
    quantize_inputs: bool,
    observer: str,
    op_names: Sequence[str] = (),
    excluded_op_names: Sequence[str] = (),
    ema_momentum: float = 0.01,
) -> list[str]:
    """Make the selected Linear layers fake-quantized in place; returns their names."""
    if fake_quant_modules(model) or fake_quant_embeddings(model):
        raise ConfigError(
            "model: it already carries FakeQuantLinear modules (prepare_qat was called); "
            "call strip_qat(model) first or use approach='qat'"
        )
    chosen = require_linears(model, op_names, excluded_op_names)
    for _, module in chosen:
        to_fake_quant(module, quantize_inputs=quantize_inputs, observer=observer, ema_momentum=ema_momentum)
    return [name for name, _ in chosen]


def prepare_qat(
    model: nn.Module,
    *,
    op_names: Sequence[str] = (),
    excluded_op_names: Sequence[str] = (),
    ema_momentum: float = 0.01,
    embeddings: bool = True,
) -> nn.Module:
    """Prepare ``model`` for quantization-aware training, in place; returns ``model``.

    Every selected Linear computes with int8-rounded weights (symmetric per output channel) and
    uint8-rounded inputs whose range is a moving average (``ema_momentum`` per training forward)
    of batch min/max. With ``embeddings`` (default) every ``nn.Embedding`` table is rounded per
    row onto the same int8 grid. Gradients pass straight through the rounding. Pruned (zero)
    weights round to exactly zero, so the pruning engine's masks hold. ``quantize(model, "qat")``
    then converts it to int8 with exactly the rounding trained with.
    """
    if not 0.0 < ema_momentum <= 1.0:
        raise ConfigError(f"ema_momentum={ema_momentum!r}: must be in (0, 1]")
    conv1d = conv1d_layers(model)
    if conv1d:  # fake quantization swaps nn.Linear classes; a Conv1D would train in float32 unseen
        raise ConfigError(
            f"approach='qat': the model's {len(conv1d)} Conv1D layers ({conv1d[0]}, ...; GPT-2's) cannot train with "
            "fake quantization; use approach='dynamic' or 'static', which make them int8 after training"
        )
    check_flag("embeddings", embeddings)
    attach_fake_quant(
        model,
        quantize_inputs=True,
        observer="ema",
        op_names=op_names,
        excluded_op_names=excluded_op_names,
        ema_momentum=ema_momentum,
    )
    if embeddings:
        attach_fake_quant_embeddings(model)
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Turn every ``FakeQuantLinear`` back into ``nn.Linear`` and every ``FakeQuantEmbedding``
    back into ``nn.Embedding`` in place (same Parameters), e.g. to ``save_pretrained`` the float
    model without the QAT range buffers; returns ``model``."""
    for _, module in fake_quant_modules(model):
        restore_linear(module)
    for _, module in fake_quant_embeddings(model):
        restore_embedding(module)
    return model


def is_qat_prepared(model: nn.Module) -> bool:
    return bool(fake_quant_modules(model) or fake_quant_embeddings(model))
