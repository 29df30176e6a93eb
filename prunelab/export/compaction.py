"""Cut pruned attention heads and FFN neurons out of a transformers model, exactly.

The modules of a head or a neuron come from the engine's coupling table
(``prunelab.sparsity.coupling``). A unit is **removable** when its weights show it contributes a
constant, whatever the input:

* its columns in the output projection (``cols``) are all zero: it contributes nothing
  (what the engine's ``head``/``neuron`` patterns and INC's ``channelx1`` on the FFN output leave);
* or its rows in the ``source`` projection (value, FFN input) are all zero: it contributes the
  constant ``W_cols[:, unit] @ act(bias_source[unit])`` (softmax rows sum to 1, so a head whose
  value rows are zero outputs its value bias), which is added to the output projection's bias
  (what ``1xchannel`` leaves on the FFN intermediate rows, whose biases it never zeroes). In a
  gated FFN (Llama's ``act(gate) * up``) the constant multiplies ``up``'s output, so a zero
  ``gate`` row is removable only when ``act`` of its bias is 0 (no bias, SiLU(0) = 0), adding nothing.

Removing a unit drops its rows (weights and bias entries) from every ``rows`` module and its
columns from every ``cols`` module, so per-layer widths differ. A layer that keeps no unit of a
kind has its ``block`` replaced by ``EmptyBlock`` and its output projections by ``BiasOnly``: the
attention output (or FFN output) is then just that bias. Nothing else changes shape: zeros inside
kept rows (4x1, 2:4, 1x1 patterns) stay where they are. With grouped-query attention a head unit is
a key/value head with its query heads, so every layer keeps whole groups and its attention's
``num_key_value_groups`` stays true.

The record of what was kept (``RECORD_KEY`` in the model config) is all that ``load_compacted``
needs to rebuild the layers before loading the weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.sparsity.coupling import KINDS, Slice, Structure, find_structures, unit_flags
from prunelab.sparsity.ops import OpView, op_kind

RECORD_KEY = "prunelab_compaction"  # config.json key holding the per-layer structure
RECORD_FORMAT = 1


class BiasOnly(nn.Module):
    """An output projection whose every input column was removed: returns its bias, broadcast over
    the leading dimensions of the input (the input's last dimension is ignored)."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*hidden_states.shape[:-1], self.bias.shape[0])

    def extra_repr(self) -> str:
        return f"out_features={self.bias.shape[0]}"


class EmptyBlock(nn.Module):
    """Stands in for a block (self-attention, FFN) that kept no unit.

    It passes its input on (only its shape matters to the ``BiasOnly`` projection after it) through
    the output projections that lived inside the block; a self-attention stand-in returns
    ``(output, None)`` like the module it replaces.

    A decoder's self-attention stand-in (``cache_layer``: the replaced attention's ``layer_idx``)
    still writes one zero key and value of width 1 per token into a key/value cache it is given:
    transformers reads the cached length off the cache's layers (layer 0 first), and a layer that
    cached nothing would restart positions and masks at 0 on every decoding step.
    """

    def __init__(self, returns_pair: bool, projections: dict[str, BiasOnly] | None = None, cache_layer: int | None = None):
        super().__init__()
        self.returns_pair = returns_pair
        self.cache_layer = cache_layer
        self._order = list(projections or {})
        for name, module in (projections or {}).items():
            self.add_module(name, module)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if self.cache_layer is not None and cache is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.cache_layer)
        output = hidden_states
        for name in self._order:
            output = getattr(self, name)(output)
        return (output, None) if self.returns_pair else output


@dataclass
class StructurePlan:
    """What compaction does to one structure (the heads or the neurons of one layer)."""

    structure: Structure
    keep: list[int]  # unit indices kept, ascending (original numbering)
    folded: list[int] = field(default_factory=list)  # removed units whose constant joins the bias


@dataclass
class Compaction:
    """The result of ``compact``."""

    model: nn.Module
    plans: list[StructurePlan]
    parameters_before: int
    parameters_after: int

    @property
    def removed(self) -> dict[str, int]:
        """Units removed and units in all, per kind: ``{"heads": 5, "heads_total": 8, ...}``."""
        counts: dict[str, int] = {}
        for kind in KINDS:
            plans = [p for p in self.plans if p.structure.kind == kind]
            counts[f"{kind}s"] = sum(p.structure.units - len(p.keep) for p in plans)
            counts[f"{kind}s_total"] = sum(p.structure.units for p in plans)
        return counts

    @property
    def structure_removed(self) -> bool:
        return any(len(p.keep) < p.structure.units for p in self.plans)

    def layers(self) -> dict[str, dict]:
        """``{layer: {"heads": {"kept": [...], "total": n}, "neurons": {"kept": count, "total": n}}}``."""
        out: dict[str, dict] = {}
        for plan in self.plans:
            kept = plan.keep if plan.structure.kind == "head" else len(plan.keep)
            out.setdefault(plan.structure.layer, {})[f"{plan.structure.kind}s"] = {
                "kept": kept,
                "total": plan.structure.units,
            }
        return out


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once each (tied weights once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def structures_of(model: nn.Module) -> list[Structure]:
    """Every head and neuron structure of ``model`` (heads counted from ``model.config``)."""
    found = []
    for kind in KINDS:
        if kind == "head" and not isinstance(getattr(getattr(model, "config", None), "num_attention_heads", None), int):
            continue  # no head count known: heads are left alone
        found.extend(find_structures(model, kind)[0])
    return found


@torch.no_grad()
def plan_compaction(model: nn.Module, kept_units: dict | None = None) -> list[StructurePlan]:
    """Which units of every structure can go (see the module doc), checked against ``kept_units``.

    ``kept_units`` (``Pruning.kept_units()``): units the engine pruned must be removable, else
    ``ValueError`` (the masks were not folded into the weights, or the weights changed since).
    """
    if getattr(getattr(model, "config", None), RECORD_KEY, None):
        raise ValueError("this model is already compacted (its config holds a prunelab_compaction record)")
    modules = dict(model.named_modules())
    plans = []
    for structure in structures_of(model):
        units = structure.units
        silent = torch.ones(units, dtype=torch.bool)
        for piece in structure.slices:
            if piece.axis == "cols":
                weight = _matrix(modules[piece.module])[:, piece.start : piece.start + units * piece.size]
                silent &= (weight.reshape(weight.shape[0], units, piece.size) == 0).all(dim=2).all(dim=0).cpu()
        source = structure.source
        rows = _matrix(modules[source.module])[source.start : source.start + units * source.size]
        constant = (rows.reshape(units, -1) == 0).all(dim=1).cpu()
        if structure.spec.gate is not None:
            # act(bias) times the gate's input-dependent output: constant (zero) only where act(bias) is 0;
            # zero gate rows (and bias) multiply whatever the activation gives by 0
            constant &= (_source_constant(modules, structure, list(range(units))) == 0).all(dim=1).cpu()
            constant |= _zero_gate(modules, structure).cpu()
        removable = silent | constant
        if kept_units is not None:
            engine = kept_units.get(structure.layer, {}).get(f"{structure.kind}s")
            if engine is not None:
                pruned = sorted(set(range(units)) - set(engine))
                stuck = [u for u in pruned if not removable[u]]
                if stuck:
                    raise ValueError(
                        f"{structure.layer}: {structure.kind}s {stuck} are pruned by the engine but their weights "
                        "are not zero; compact the model the masks were applied to"
                    )
        keep = [u for u in range(units) if not removable[u]]
        folded = [] if structure.spec.gate is not None else [u for u in range(units) if constant[u] and not silent[u]]
        plans.append(StructurePlan(structure, keep, folded))
    return plans


@torch.no_grad()
def compact(model: nn.Module, kept_units: dict | None = None, inplace: bool = False) -> Compaction:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) with every removable head and
    neuron cut out; its outputs equal the input model's up to float rounding.

    ``model`` is a BertFor*/RobertaFor*/DistilBertFor*, LlamaFor*/Qwen2For*/MistralFor* or
    GPT2LMHeadModel (any model whose layers the coupling table knows) whose pruned weights are
    zero, e.g. a saved prunelab run. The copy's config carries the record that
    ``save_compacted``/``load_compacted`` need.
    """
    before = count_parameters(model)
    plans = plan_compaction(model, kept_units)
    target = model if inplace else copy.deepcopy(model)
    for plan in plans:
        if len(plan.keep) < plan.structure.units:
            _cut(target, plan)
    record = build_record(plans)
    if getattr(target, "config", None) is not None:
        setattr(target.config, RECORD_KEY, record)
    return Compaction(target, plans, before, count_parameters(target))


def build_record(plans: list[StructurePlan]) -> dict:
    layers: dict[str, dict] = {}
    for plan in plans:
        entry = layers.setdefault(plan.structure.layer, {})
        if plan.structure.kind == "head":
            entry["heads"] = list(plan.keep)
            entry["head_size"] = plan.structure.unit_size
        else:
            entry["neurons"] = len(plan.keep)
    architecture = plans[0].structure.architecture if plans else None
    return {"format": RECORD_FORMAT, "architecture": architecture, "layers": layers}


def _view(module: nn.Module) -> OpView:
    return OpView(op_kind(module), module.weight.shape)


def _matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as ``[out, in]`` (GPT-2's Conv1D stores ``[in, out]``)."""
    return _view(module).to_2d(module.weight)


def _kept_index(structure: Structure, module: str, keep: list[int], length: int, device: torch.device) -> torch.Tensor:
    """Indices along ``module``'s unit axis that stay: those of kept units and those of no unit."""
    flags = torch.zeros(structure.units, dtype=torch.bool, device=device)
    flags[keep] = True
    return torch.nonzero(unit_flags(structure.slices_of(module), flags, length)).squeeze(1)


def _resized(old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module of ``old``'s kind holding the ``[out, in]`` ``weight`` and ``bias``."""
    out_features, in_features = weight.shape
    device, dtype = old.weight.device, old.weight.dtype
    if op_kind(old) == "Conv1D":  # transformers' Conv1D(nf=out, nx=in), always with a bias
        new = type(old)(out_features, in_features).to(device, dtype)
    else:
        new = nn.Linear(in_features, out_features, bias=bias is not None, device=device, dtype=dtype)
    new.weight.copy_(_view(new).from_2d(weight))
    if bias is not None:
        new.bias.copy_(bias)
    elif new.bias is not None:
        new.bias.zero_()
    return new


def _cut(model: nn.Module, plan: StructurePlan) -> None:
    """Remove the units outside ``plan.keep`` from ``model``'s modules, folding constants."""
    structure, modules = plan.structure, dict(model.named_modules())
    fold = _folded_bias(modules, plan)
    if not plan.keep:
        _empty(model, structure, fold)
        return
    for name in structure.rows:
        old = modules[name]
        weight = _matrix(old)
        index = _kept_index(structure, name, plan.keep, weight.shape[0], weight.device)
        model.set_submodule(name, _resized(old, weight[index], None if old.bias is None else old.bias[index]))
    for name in structure.cols:
        old = modules[name]
        weight = _matrix(old)
        index = _kept_index(structure, name, plan.keep, weight.shape[1], weight.device)
        extra = fold.get(name)
        bias = old.bias if extra is None else extra if old.bias is None else old.bias + extra
        model.set_submodule(name, _resized(old, weight[:, index], bias))
    _set_counts(modules[structure.module(structure.spec.block)], structure, len(plan.keep))


def _unit_index(units: list[int], piece: Slice, device: torch.device) -> torch.Tensor:
    """The indices of ``units`` in ``piece``, unit by unit."""
    first = torch.tensor(units, dtype=torch.long, device=device).unsqueeze(1) * piece.size + piece.start
    return (first + torch.arange(piece.size, device=device)).flatten()


def _source_constant(modules: dict[str, nn.Module], structure: Structure, units: list[int]) -> torch.Tensor:
    """``[len(units), source size]``: what each unit's source rows output when their weights are
    zero, after the activation (the bias, or 0 without one)."""
    source = structure.source
    module = modules[source.module]
    index = _unit_index(units, source, module.weight.device)
    constant = module.bias[index] if module.bias is not None else module.weight.new_zeros(index.numel())
    if structure.spec.activation is not None:
        constant = _resolve(modules, structure.module(structure.spec.activation))(constant)
    return constant.reshape(len(units), source.size)


def _zero_gate(modules: dict[str, nn.Module], structure: Structure) -> torch.Tensor:
    """``[units]`` bool: the gated FFN's other input projection has zero rows (and bias) for the
    unit, laid out like its source rows."""
    source, units = structure.source, structure.units
    module = _resolve(modules, structure.module(structure.spec.gate))
    span = slice(source.start, source.start + units * source.size)
    zero = (_matrix(module)[span].reshape(units, -1) == 0).all(dim=1)
    if module.bias is not None:
        zero &= (module.bias[span].reshape(units, source.size) == 0).all(dim=1)
    return zero


def _folded_bias(modules: dict[str, nn.Module], plan: StructurePlan) -> dict[str, torch.Tensor]:
    """Per ``cols`` module: the constants of the folded units, summed (``W[:, unit] @ act(b)``).

    A unit's columns may be a multiple of its source rows: with grouped-query attention each of the
    query heads sharing a value head adds that value head's constant, so it is tiled."""
    structure = plan.structure
    if not plan.folded or modules[structure.source.module].bias is None:
        return {}
    constant = _source_constant(modules, structure, plan.folded)
    fold = {}
    for piece in structure.slices:
        if piece.axis != "cols":
            continue
        weight = _matrix(modules[piece.module])
        index = _unit_index(plan.folded, piece, weight.device)
        tiled = constant.repeat(1, piece.size // structure.source.size).flatten()
        fold[piece.module] = fold.get(piece.module, 0) + weight[:, index] @ tiled
    return fold


def _resolve(modules: dict[str, nn.Module], name: str):
    """A module, or a plain function stored as an attribute (``intermediate_act_fn`` may be one)."""
    if name in modules:
        return modules[name]
    parent, _, attribute = name.rpartition(".")
    return getattr(modules[parent], attribute)


def _empty(model: nn.Module, structure: Structure, fold: dict[str, torch.Tensor]) -> None:
    """The layer keeps no unit of this kind: the block becomes an ``EmptyBlock`` and every output
    projection a ``BiasOnly`` (its bias plus the folded constants)."""
    modules = dict(model.named_modules())
    block = structure.module(structure.spec.block)
    inside: dict[str, BiasOnly] = {}
    for name in structure.cols:
        old = modules[name]
        bias = old.bias if old.bias is not None else old.weight.new_zeros(_view(old).rows)
        projection = BiasOnly(bias + fold[name] if name in fold else bias)
        if name.startswith(block + "."):
            inside[name[len(block) + 1 :]] = projection
        else:
            model.set_submodule(name, projection)
    layer_idx = getattr(modules[block], "layer_idx", None) if structure.kind == "head" else None
    model.set_submodule(block, EmptyBlock(structure.kind == "head", inside, layer_idx if isinstance(layer_idx, int) else None))


def _set_counts(block: nn.Module, structure: Structure, kept: int) -> None:
    """Set the per-layer counts the block keeps (``spec.attributes``) to the kept units: some
    forwards read them (GPT-2 splits ``c_attn`` by ``split_size``), the others keep them true."""
    values = {"units": kept, "width": kept * structure.unit_size}
    for attribute, what in structure.spec.attributes:
        if isinstance(getattr(block, attribute, None), int):
            setattr(block, attribute, values[what])


@torch.no_grad()
def rebuild(model: nn.Module, record: dict) -> nn.Module:
    """Give a freshly built (dense-shaped) ``model`` the layer widths of ``record``, in place, so
    that a compacted state dict loads into it. The weights are left uninitialised-by-design: load
    them next."""
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"unknown {RECORD_KEY} format {record.get('format')!r} (expected {RECORD_FORMAT})")
    by_layer = record["layers"]
    for structure in structures_of(model):
        entry = by_layer.get(structure.layer)
        if entry is None:
            continue
        if structure.kind == "head" and "heads" in entry:
            keep = list(entry["heads"])
        elif structure.kind == "neuron" and "neurons" in entry:
            keep = list(range(int(entry["neurons"])))
        else:
            continue
        if len(keep) < structure.units:
            _cut(model, StructurePlan(structure, keep))
    return model
