"""Which modules of a transformer layer hold one attention head or one FFN neuron.

One small table per architecture, in module names relative to a layer (nothing is imported from
transformers). A unit of kind ``head`` or ``neuron`` is:

* its **rows** in each ``rows`` part: ``size`` consecutive output rows of the weight (read as
  ``[out, in]``: GPT-2's Conv1D is transposed) and the same entries of the bias (a head: its rows
  of query, key and value; a neuron: one row of each FFN input projection);
* its **columns** in each ``cols`` part: ``size`` consecutive input columns of the weight (a head:
  its columns of the attention output projection; a neuron: one column of the FFN output
  projection). The bias of a ``cols`` module belongs to no unit.

Each part has its own ``size`` (rows or columns per unit), found from the module's width and the
unit count: with grouped-query attention (Llama, Qwen2, Mistral) a unit is one key/value head and
the query heads that share it, so it owns ``head_dim`` rows of ``k_proj``/``v_proj`` but
``head_dim * num_attention_heads / num_key_value_heads`` rows of ``q_proj`` and columns of
``o_proj``. A fused module is several parts: GPT-2's ``c_attn`` holds query, key and value side by
side, three ``Part``s of one module.

Zeroing all of it removes the unit from the function exactly, whatever the inputs: a pruned head
contributes nothing to the attention output (a layer that loses every head outputs just the output
projection's bias), a pruned neuron nothing to the FFN output. Rotary position embeddings act
within each head, so the heads kept are untouched. ``prunelab.export`` uses the same table to cut
the units out physically.

More names per kind serve compaction only: ``block`` (the module that computes all the units from
the layer input, replaced when a layer keeps none), ``source`` (the rows part whose zero rows leave
a unit's output constant: the value projection, the FFN input projection), ``activation`` (between
``source`` and ``cols``; ``None`` for heads, whose softmax average of a constant is that constant),
``gate`` (a gated FFN's other input projection, multiplied by the activation: a unit with zero
``source`` rows is then removable only when the activation of its bias is 0, and one with zero
``gate`` rows and bias always) and ``attributes``
(per-layer counts the block's forward reads, set to the kept ones).

To support another architecture, add one ``Architecture`` line; ``find_structures`` finds every
layer of a model that has all the modules of a kind. The engine imports nothing from transformers:
layers are recognised by module names alone.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.sparsity.ops import OpView, op_kind

KINDS = ("head", "neuron")
MODULE_KINDS = ("Linear", "Conv1D")  # what a unit's modules may be (GPT-2's Conv1D: weights [in, out])


@dataclass(frozen=True)
class Part:
    """A module, or block ``piece`` of ``pieces`` equal blocks side by side along the unit axis
    (GPT-2's fused ``c_attn``: query, key and value are pieces 0, 1, 2 of 3)."""

    module: str  # relative to the layer
    piece: int = 0
    pieces: int = 1


@dataclass(frozen=True)
class UnitSpec:
    """Parts relative to a layer. ``rows``/``cols`` are what the pruning engine masks; the others
    tell compaction (``prunelab.export``) how to cut units out exactly."""

    rows: tuple[Part, ...]  # the unit's output rows + bias entries
    cols: tuple[Part, ...]  # the unit's input columns
    block: str  # the module computing all units from the layer input; replaced when a layer keeps none
    source: Part  # the rows part whose zero rows make a unit's output a constant (value, FFN input)
    activation: str | None  # applied between ``source`` and ``cols`` (None: the constant passes as is)
    gate: str | None = None  # gated FFN: the module whose output multiplies the activation
    kv_heads: str | None = None  # config attribute: key/value heads, one unit each with its query heads
    attributes: tuple[tuple[str, str], ...] = ()  # block attribute -> "units" | "width" (kept units x source size)


@dataclass(frozen=True)
class Architecture:
    name: str
    models: str  # model families with these module names (documentation)
    head: UnitSpec
    neuron: UnitSpec

    def spec(self, kind: str) -> UnitSpec:
        return self.head if kind == "head" else self.neuron


def _parts(*modules: str) -> tuple[Part, ...]:
    return tuple(Part(module) for module in modules)


ARCHITECTURES = (
    Architecture(
        "bert",
        "BERT, RoBERTa, MiniLM, ELECTRA, XLM-RoBERTa, CamemBERT (transformers' Bert-style layers)",
        head=UnitSpec(
            rows=_parts("attention.self.query", "attention.self.key", "attention.self.value"),
            cols=_parts("attention.output.dense"),
            block="attention.self",
            source=Part("attention.self.value"),
            activation=None,
            attributes=(("num_attention_heads", "units"), ("all_head_size", "width")),
        ),
        neuron=UnitSpec(
            rows=_parts("intermediate.dense"),
            cols=_parts("output.dense"),
            block="intermediate",
            source=Part("intermediate.dense"),
            activation="intermediate.intermediate_act_fn",
        ),
    ),
    Architecture(
        "distilbert",
        "DistilBERT",
        head=UnitSpec(
            rows=_parts("attention.q_lin", "attention.k_lin", "attention.v_lin"),
            cols=_parts("attention.out_lin"),
            block="attention",
            source=Part("attention.v_lin"),
            activation=None,
            attributes=(("n_heads", "units"),),
        ),
        neuron=UnitSpec(
            rows=_parts("ffn.lin1"), cols=_parts("ffn.lin2"), block="ffn", source=Part("ffn.lin1"), activation="ffn.activation"
        ),
    ),
    Architecture(
        "llama",
        "Llama, Mistral, Qwen2 (q/k/v/o_proj attention with grouped-query heads, gated gate/up/down_proj MLP)",
        # The attention forward reads head_dim and num_key_value_groups, which cutting whole
        # key/value groups leaves unchanged: no attribute to set.
        head=UnitSpec(
            rows=_parts("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            cols=_parts("self_attn.o_proj"),
            block="self_attn",
            source=Part("self_attn.v_proj"),
            activation=None,
            kv_heads="num_key_value_heads",
        ),
        neuron=UnitSpec(
            rows=_parts("mlp.gate_proj", "mlp.up_proj"),
            cols=_parts("mlp.down_proj"),
            block="mlp",
            source=Part("mlp.gate_proj"),
            activation="mlp.act_fn",
            gate="mlp.up_proj",
        ),
    ),
    Architecture(
        "gpt2",
        "GPT-2 (Conv1D modules, query/key/value fused in c_attn)",
        head=UnitSpec(
            rows=tuple(Part("attn.c_attn", piece, 3) for piece in range(3)),
            cols=_parts("attn.c_proj"),
            block="attn",
            source=Part("attn.c_attn", 2, 3),
            activation=None,
            attributes=(("num_heads", "units"), ("split_size", "width")),  # forward splits c_attn by split_size
        ),
        neuron=UnitSpec(
            rows=_parts("mlp.c_fc"), cols=_parts("mlp.c_proj"), block="mlp", source=Part("mlp.c_fc"), activation="mlp.act"
        ),
    ),
)


@dataclass(frozen=True)
class Slice:
    """A part resolved in one layer: unit ``u`` owns indices ``[start + u * size, start + (u + 1) * size)``
    along ``axis`` (``rows`` or ``cols`` of the ``[out, in]`` view of ``module``'s weight)."""

    module: str  # full module name
    axis: str
    start: int
    size: int


def unit_flags(slices: Iterable[Slice], keep: torch.Tensor, length: int) -> torch.Tensor:
    """Per index of an axis of ``length``: the ``keep`` flag (``[units]``) of the unit owning it, 1
    for indices no slice covers."""
    flags = torch.ones(length, dtype=keep.dtype, device=keep.device)
    units = keep.shape[0]
    for piece in slices:
        flags[piece.start : piece.start + units * piece.size] = keep.repeat_interleave(piece.size)
    return flags


@dataclass(frozen=True)
class Structure:
    """The units of one kind in one layer: e.g. the 12 heads of ``bert.encoder.layer.3``."""

    kind: str  # "head" or "neuron"
    layer: str  # module name of the layer ("bert.encoder.layer.3")
    architecture: str
    rows: tuple[str, ...]  # full module names, each once
    cols: tuple[str, ...]
    units: int  # heads (key/value groups with grouped-query attention) or neurons
    slices: tuple[Slice, ...]  # every part, rows then cols
    source: Slice
    spec: UnitSpec

    @property
    def unit_size(self) -> int:
        """Rows per unit in the source part: ``head_dim`` for heads, 1 for neurons."""
        return self.source.size

    def module(self, relative: str | None) -> str | None:
        """Full module name of a name relative to the layer."""
        return None if relative is None else _join(self.layer, relative)

    def slices_of(self, module: str) -> tuple[Slice, ...]:
        return tuple(piece for piece in self.slices if piece.module == module)

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
            anchor = architecture.spec(kind).rows[0].module
            if name == anchor:
                found.append(("", architecture))
            elif name.endswith("." + anchor):
                found.append((name[: -len(anchor) - 1], architecture))
    return found


def find_structures(model: nn.Module, kind: str, num_attention_heads: int | None = None) -> tuple[list[Structure], list[str]]:
    """Every complete structure of ``kind`` in ``model``, and the problems found on the way.

    A structure is complete when all of its modules exist, are ``nn.Linear`` (or GPT-2 ``Conv1D``)
    and every part splits evenly into the units, with the output projection's columns per unit
    equal to the first rows part's rows per unit. Heads are counted by
    ``num_attention_heads``, which defaults to ``model.config.num_attention_heads``; with
    grouped-query attention a unit is a key/value head (``config.num_key_value_heads``) with its
    query heads. Raises ``ValueError`` when heads are asked for and the count is unknown or does
    not divide the first rows part.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown unit kind {kind!r}; known: {', '.join(KINDS)}")
    modules = dict(model.named_modules())
    structures, problems = [], []
    for layer, architecture in find_layers(modules, kind):
        spec = architecture.spec(kind)
        where = layer or "<model>"
        names = {part.module: _join(layer, part.module) for part in spec.rows + spec.cols}
        missing = [name for name in names.values() if op_kind(modules.get(name)) not in MODULE_KINDS]
        if missing:
            problems.append(f"{where}: no Linear {', '.join(missing)}")
            continue
        views = {name: OpView(op_kind(modules[name]), modules[name].weight.shape) for name in names.values()}
        first = spec.rows[0]
        width = views[names[first.module]].rows // first.pieces
        if kind == "head":
            units, counted = _head_units(model, spec, num_attention_heads)
            if width % units:
                raise ValueError(f"{layer}: {names[first.module]} has {width} outputs, not a multiple of {counted}={units}")
        else:
            units = width
        slices, uneven = [], False
        for axis, parts in (("rows", spec.rows), ("cols", spec.cols)):
            for part in parts:
                view = views[names[part.module]]
                length = view.rows if axis == "rows" else view.cols
                block = length // part.pieces
                uneven |= block * part.pieces != length or block % units != 0 or block == 0
                slices.append(Slice(names[part.module], axis, part.piece * block, block // units))
        if uneven or any(piece.size != slices[0].size for piece in slices if piece.axis == "cols"):
            problems.append(f"{where}: {kind} modules disagree on the width ({units} units)")
            continue
        source = slices[(spec.rows + spec.cols).index(spec.source)]
        rows = tuple(dict.fromkeys(_join(layer, part.module) for part in spec.rows))
        cols = tuple(dict.fromkeys(_join(layer, part.module) for part in spec.cols))
        structures.append(Structure(kind, layer, architecture.name, rows, cols, units, tuple(slices), source, spec))
    return structures, problems


def _head_units(model: nn.Module, spec: UnitSpec, num_attention_heads: int | None) -> tuple[int, str]:
    """Units per attention layer and the setting that counts them: key/value heads where the
    architecture groups query heads by them and the config says how many, else the head count."""
    config = getattr(model, "config", None)
    groups = getattr(config, spec.kv_heads, None) if spec.kv_heads else None
    if isinstance(groups, int) and groups >= 1:
        return groups, spec.kv_heads
    return (num_attention_heads if num_attention_heads is not None else _config_heads(model)), "num_attention_heads"


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
        f"{a.name} ({a.models}): {', '.join(dict.fromkeys(p.module for p in a.spec(kind).rows + a.spec(kind).cols))}"
        for a in ARCHITECTURES
    )
