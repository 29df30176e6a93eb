"""Which modules of a transformer layer hold one attention head or one FFN neuron.

One small table per architecture, in module names relative to a layer (nothing is imported from
transformers). A unit of kind ``head`` or ``neuron`` is:

* its **rows** in each ``rows`` module: ``unit_size`` consecutive output rows of the weight and the
  same entries of the bias (a head: ``head_dim`` rows of query, key and value; a neuron: one row of
  the intermediate projection);
* its **columns** in each ``cols`` module: the same ``unit_size`` input columns of the weight (a
  head: its ``head_dim`` columns of the attention output projection; a neuron: one column of the
  FFN output projection). The bias of a ``cols`` module belongs to no unit.

Zeroing all of it removes the unit from the function exactly, whatever the inputs: a pruned head
contributes nothing to the attention output (a layer that loses every head outputs just the output
projection's bias), a pruned neuron nothing to the FFN output. ``prunelab.export`` uses the same
table to cut the units out physically.

Three more names per kind serve compaction only: ``block`` (the module that computes all the units
from the layer input, replaced when a layer keeps none), ``source`` (the rows module whose zero
rows leave a unit's output constant: the value projection, the FFN input projection) and
``activation`` (between ``source`` and ``cols``; ``None`` for heads, whose softmax average of a
constant is that constant).

To support another architecture, add one ``Architecture`` line; ``find_structures`` finds every
layer of a model that has all the modules of a kind. The engine imports nothing from transformers:
layers are recognised by module names alone.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

KINDS = ("head", "neuron")


@dataclass(frozen=True)
class UnitSpec:
    """Module names relative to a layer. ``rows``/``cols`` are what the pruning engine masks; the
    other three tell compaction (``prunelab.export``) how to cut units out exactly."""

    rows: tuple[str, ...]  # Linear modules holding the unit's output rows + bias entries
    cols: tuple[str, ...]  # Linear modules holding the unit's input columns
    block: str  # the module computing all units from the layer input; replaced when a layer keeps none
    source: str  # the rows module whose zero rows make a unit's output a constant (value, FFN input)
    activation: str | None  # applied between ``source`` and ``cols`` (None: the constant passes as is)


@dataclass(frozen=True)
class Architecture:
    name: str
    models: str  # model families with these module names (documentation)
    head: UnitSpec
    neuron: UnitSpec

    def spec(self, kind: str) -> UnitSpec:
        return self.head if kind == "head" else self.neuron


ARCHITECTURES = (
    Architecture(
        "bert",
        "BERT, RoBERTa, MiniLM, ELECTRA, XLM-RoBERTa, CamemBERT (transformers' Bert-style layers)",
        head=UnitSpec(
            rows=("attention.self.query", "attention.self.key", "attention.self.value"),
            cols=("attention.output.dense",),
            block="attention.self",
            source="attention.self.value",
            activation=None,
        ),
        neuron=UnitSpec(
            rows=("intermediate.dense",),
            cols=("output.dense",),
            block="intermediate",
            source="intermediate.dense",
            activation="intermediate.intermediate_act_fn",
        ),
    ),
    Architecture(
        "distilbert",
        "DistilBERT",
        head=UnitSpec(
            rows=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
            cols=("attention.out_lin",),
            block="attention",
            source="attention.v_lin",
            activation=None,
        ),
        neuron=UnitSpec(
            rows=("ffn.lin1",), cols=("ffn.lin2",), block="ffn", source="ffn.lin1", activation="ffn.activation"
        ),
    ),
)


@dataclass(frozen=True)
class Structure:
    """The units of one kind in one layer: e.g. the 12 heads of ``bert.encoder.layer.3``."""

    kind: str  # "head" or "neuron"
    layer: str  # module name of the layer ("bert.encoder.layer.3")
    architecture: str
    rows: tuple[str, ...]  # full module names
    cols: tuple[str, ...]
    units: int  # heads or neurons
    unit_size: int  # rows (cols) per unit: head_dim for heads, 1 for neurons
    spec: UnitSpec

    def module(self, relative: str | None) -> str | None:
        """Full module name of a name relative to the layer."""
        return None if relative is None else _join(self.layer, relative)

    @property
    def name(self) -> str:
        """``<layer>:heads`` or ``<layer>:neurons``: the structure's key in state dicts and reports."""
        return f"{self.layer}:{self.kind}s"

    @property
    def members(self) -> tuple[str, ...]:
        return self.rows + self.cols


def layer_index(layer: str) -> int | None:
    """The trailing layer number of a layer's module name (``bert.encoder.layer.3`` -> 3)."""
    found = re.search(r"(\d+)$", layer)
    return int(found[1]) if found else None


def _join(layer: str, relative: str) -> str:
    return f"{layer}.{relative}" if layer else relative


def find_layers(names: Iterable[str], kind: str) -> list[tuple[str, Architecture]]:
    """``(layer, architecture)`` for every layer whose first ``rows`` module of ``kind`` is among
    ``names`` (other members are not checked here), in module order."""
    found = []
    for name in names:
        for architecture in ARCHITECTURES:
            anchor = architecture.spec(kind).rows[0]
            if name == anchor:
                found.append(("", architecture))
            elif name.endswith("." + anchor):
                found.append((name[: -len(anchor) - 1], architecture))
    return found


def find_structures(model: nn.Module, kind: str, num_attention_heads: int | None = None) -> tuple[list[Structure], list[str]]:
    """Every complete structure of ``kind`` in ``model``, and the problems found on the way.

    A structure is complete when all of its modules exist and are ``nn.Linear`` with consistent
    shapes. ``num_attention_heads`` (needed for heads) defaults to ``model.config.num_attention_heads``.
    Raises ``ValueError`` when heads are asked for and the count is unknown or does not divide the
    projections.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown unit kind {kind!r}; known: {', '.join(KINDS)}")
    modules = dict(model.named_modules())
    structures, problems = [], []
    for layer, architecture in find_layers(modules, kind):
        spec = architecture.spec(kind)
        rows = tuple(_join(layer, relative) for relative in spec.rows)
        cols = tuple(_join(layer, relative) for relative in spec.cols)
        missing = [name for name in rows + cols if not isinstance(modules.get(name), nn.Linear)]
        if missing:
            problems.append(f"{layer or '<model>'}: no Linear {', '.join(missing)}")
            continue
        width = modules[rows[0]].out_features
        if any(modules[name].out_features != width for name in rows) or any(
            modules[name].in_features != width for name in cols
        ):
            problems.append(f"{layer or '<model>'}: {kind} modules disagree on the width ({width})")
            continue
        if kind == "head":
            heads = num_attention_heads if num_attention_heads is not None else _config_heads(model)
            if width % heads:
                raise ValueError(
                    f"{layer}: {rows[0]} has {width} outputs, not a multiple of num_attention_heads={heads}"
                )
            units, unit_size = heads, width // heads
        else:
            units, unit_size = width, 1
        structures.append(Structure(kind, layer, architecture.name, rows, cols, units, unit_size, spec))
    return structures, problems


def _config_heads(model: nn.Module) -> int:
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(
            "pattern 'head' needs the number of attention heads: the model has no config.num_attention_heads; "
            "set the pruning key num_attention_heads"
        )
    return heads


def known_layouts(kind: str) -> str:
    """For error messages: the module names each architecture's ``kind`` units need."""
    return "; ".join(
        f"{a.name} ({a.models}): {', '.join(a.spec(kind).rows + a.spec(kind).cols)}" for a in ARCHITECTURES
    )
