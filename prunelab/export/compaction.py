"""Cut pruned attention heads and FFN neurons out of a transformers encoder, exactly.

The modules of a head or a neuron come from the engine's coupling table
(``prunelab.sparsity.coupling``). A unit is **removable** when its weights show it contributes a
constant, whatever the input:

* its columns in the output projection (``cols``) are all zero: it contributes nothing
  (what the engine's ``head``/``neuron`` patterns and INC's ``channelx1`` on the FFN output leave);
* or its rows in the ``source`` projection (value, FFN input) are all zero: it contributes the
  constant ``W_cols[:, unit] @ act(bias_source[unit])`` (softmax rows sum to 1, so a head whose
  value rows are zero outputs its value bias), which is added to the output projection's bias
  (what ``1xchannel`` leaves on the FFN intermediate rows, whose biases it never zeroes).

Removing a unit drops its rows (weights and bias entries) from every ``rows`` module and its
columns from every ``cols`` module, so per-layer widths differ. A layer that keeps no unit of a
kind has its ``block`` replaced by ``EmptyBlock`` and its output projections by ``BiasOnly``: the
attention output (or FFN output) is then just that bias. Nothing else changes shape: zeros inside
kept rows (4x1, 2:4, 1x1 patterns) stay where they are.

The record of what was kept (``RECORD_KEY`` in the model config) is all that ``load_compacted``
needs to rebuild the layers before loading the weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.sparsity.coupling import KINDS, Structure, find_structures

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
    """

    def __init__(self, returns_pair: bool, projections: dict[str, BiasOnly] | None = None):
        super().__init__()
        self.returns_pair = returns_pair
        self._order = list(projections or {})
        for name, module in (projections or {}).items():
            self.add_module(name, module)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
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
        units, size = structure.units, structure.unit_size
        silent = torch.ones(units, dtype=torch.bool)
        for name in structure.cols:
            weight = modules[name].weight
            silent &= (weight.reshape(weight.shape[0], units, size) == 0).all(dim=2).all(dim=0).cpu()
        source = modules[structure.module(structure.spec.source)].weight
        constant = (source.reshape(units, -1) == 0).all(dim=1).cpu()
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
        folded = [u for u in range(units) if constant[u] and not silent[u]]
        plans.append(StructurePlan(structure, keep, folded))
    return plans


@torch.no_grad()
def compact(model: nn.Module, kept_units: dict | None = None, inplace: bool = False) -> Compaction:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) with every removable head and
    neuron cut out; its outputs equal the input model's up to float rounding.

    ``model`` is a BertFor*/RobertaFor*/DistilBertFor* (any model whose layers the coupling table
    knows) whose pruned weights are zero, e.g. a saved prunelab run. The copy's config carries the
    record that ``save_compacted``/``load_compacted`` need.
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


def _index(keep: list[int], size: int, device: torch.device) -> torch.Tensor:
    return (torch.tensor(keep, dtype=torch.long, device=device).unsqueeze(1) * size + torch.arange(size, device=device)).flatten()


def _linear_like(old: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device=old.weight.device, dtype=old.weight.dtype)


def _cut(model: nn.Module, plan: StructurePlan) -> None:
    """Remove the units outside ``plan.keep`` from ``model``'s modules, folding constants."""
    structure, modules = plan.structure, dict(model.named_modules())
    size = structure.unit_size
    fold = _folded_bias(modules, plan)
    if not plan.keep:
        _empty(model, structure, fold)
        return
    index = _index(plan.keep, size, modules[structure.rows[0]].weight.device)
    for name in structure.rows:
        old = modules[name]
        new = _linear_like(old, old.in_features, index.numel(), old.bias is not None)
        new.weight.copy_(old.weight[index])
        if old.bias is not None:
            new.bias.copy_(old.bias[index])
        model.set_submodule(name, new)
    for name in structure.cols:
        old = modules[name]
        extra = fold.get(name)
        new = _linear_like(old, index.numel(), old.out_features, old.bias is not None or extra is not None)
        new.weight.copy_(old.weight[:, index])
        if new.bias is not None:
            new.bias.copy_((old.bias if old.bias is not None else 0) + (extra if extra is not None else 0))
        model.set_submodule(name, new)
    _set_head_count(modules, structure, len(plan.keep))


def _folded_bias(modules: dict[str, nn.Module], plan: StructurePlan) -> dict[str, torch.Tensor]:
    """Per ``cols`` module: the constants of the folded units, summed (``W[:, unit] @ act(b)``)."""
    structure = plan.structure
    source = modules[structure.module(structure.spec.source)]
    if not plan.folded or source.bias is None:
        return {}
    index = _index(plan.folded, structure.unit_size, source.weight.device)
    constant = source.bias[index]
    if structure.spec.activation is not None:
        constant = _resolve(modules, structure.module(structure.spec.activation))(constant)
    return {name: modules[name].weight[:, index] @ constant for name in structure.cols}


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
        bias = old.bias if old.bias is not None else torch.zeros(old.out_features, device=old.weight.device, dtype=old.weight.dtype)
        projection = BiasOnly(bias + fold[name] if name in fold else bias)
        if name.startswith(block + "."):
            inside[name[len(block) + 1 :]] = projection
        else:
            model.set_submodule(name, projection)
    model.set_submodule(block, EmptyBlock(structure.kind == "head", inside))


def _set_head_count(modules: dict[str, nn.Module], structure: Structure, kept: int) -> None:
    """Keep the attention module's bookkeeping attributes true (forward passes do not read them)."""
    if structure.kind != "head":
        return
    parent = modules[structure.rows[0].rpartition(".")[0]] if "." in structure.rows[0] else None
    if parent is None:
        return
    for attribute in ("num_attention_heads", "n_heads"):
        if isinstance(getattr(parent, attribute, None), int):
            setattr(parent, attribute, kept)
    if isinstance(getattr(parent, "all_head_size", None), int):
        parent.all_head_size = kept * structure.unit_size


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
