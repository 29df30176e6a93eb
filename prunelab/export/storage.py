"""Saving and loading compacted models: ``save_pretrained`` files plus one config record.

A compacted directory is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``);
its ``config.json`` also holds ``prunelab_compaction``: per layer the kept heads (original
indices) and head size, and the number of kept FFN neurons. A stock ``from_pretrained`` cannot load
it (the layer widths differ from what the config's single ``num_attention_heads`` and
``intermediate_size`` describe); ``load_compacted(directory)`` builds the model from its config,
rebuilds the layers to the recorded widths and loads the weights strictly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from prunelab.export.compaction import RECORD_KEY, Compaction, rebuild

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def save_compacted(model: nn.Module | Compaction, directory: str | Path, tokenizer=None) -> Path:
    """``save_pretrained`` of a compacted model (its config carries the record) into ``directory``."""
    if isinstance(model, Compaction):
        model = model.model
    if not getattr(model.config, RECORD_KEY, None):
        raise ValueError(f"the model has no {RECORD_KEY} record in its config: compact it with prunelab.export.compact")
    directory = Path(directory)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def load_compacted(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model saved in ``directory``, in eval mode: compacted (per-layer widths from the config's
    ``prunelab_compaction`` record) or, without a record, loaded as ``from_pretrained`` would."""
    import transformers

    directory = Path(directory)
    config = transformers.AutoConfig.from_pretrained(directory)
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        raise ValueError(f"{directory}/config.json names no transformers model class in 'architectures' ({architectures})")
    record = getattr(config, RECORD_KEY, None)
    if not record:
        return model_class.from_pretrained(directory).to(device).eval()
    model = model_class(config)
    rebuild(model, record)
    state = _read_state(directory)
    result = model.load_state_dict(state, strict=False)
    loaded = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in state}
    missing = [name for name in result.missing_keys if id(_tensor(model, name)) not in loaded]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{directory}: weights do not match the recorded structure (missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    return model.to(device).eval()


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module, _, attribute = name.rpartition(".")
    return getattr(model.get_submodule(module) if module else model, attribute)


def _read_state(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``save_pretrained`` directory (safetensors or torch files, sharded or not)."""
    files: list[Path] = []
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            files = [directory / shard for shard in shards]
        else:
            files = [path]
        break
    if not files:
        raise FileNotFoundError(f"{directory}: no model weights ({', '.join(WEIGHT_FILES)})")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state
