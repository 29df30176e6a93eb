"""What a run leaves in its output directory: ``config.yaml`` (resolved), ``metrics.jsonl`` (one
line per evaluation), ``summary.json`` (status ``running``, ``completed``, ``failed`` or
``preempted``) and the model saved with ``save_pretrained``.

Files are written so that a crash never leaves something that looks complete: JSON files via a
temporary file and a rename, the model into ``model.tmp/`` renamed to ``model/`` once saved (and
verified when asked).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

import prunelab

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
MODEL_DIR = "model"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(_finite(payload), indent=2, default=_plain) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_finite(record), default=_plain) + "\n")


def _finite(value: Any) -> Any:
    """NaN/inf (e.g. the eval loss of a task without eval labels) as null: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def versions() -> dict[str, str]:
    return {
        "prunelab": prunelab.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


class RunSummary:
    """``summary.json`` of one run, rewritten whole each time a field changes state.

    The keys are a contract with ``prunelab.report``: status, error, task, task_family, model,
    model_name_or_path, do_prune, pattern, pruning_type, target_sparsity, seed, main_metric,
    greater_is_better (the task's: whether a larger main metric is better; null until the task is
    built; a summary written before this key existed is read as true), metrics, sparsity,
    quantization (null, or approach, metrics, size_bytes, float_size_bytes), overrides, notes,
    wall_time_s, versions, output_dir.
    """

    def __init__(self, output_dir: Path, writes: bool = True, **fields):
        self.path = output_dir / SUMMARY
        self.writes = writes
        self.fields = {
            "status": "running",
            "error": None,
            "task": None,
            "task_family": None,
            "model": None,
            "model_name_or_path": None,
            "do_prune": None,
            "pattern": None,
            "pruning_type": None,
            "target_sparsity": None,
            "seed": None,
            "main_metric": None,
            "greater_is_better": None,
            "metrics": {},
            "sparsity": None,
            "quantization": None,
            "overrides": [],
            "notes": [],
            "wall_time_s": None,
            "versions": versions(),
            "output_dir": str(output_dir),
        }
        self.update(**fields)

    def update(self, **fields) -> None:
        unknown = set(fields) - set(self.fields)
        if unknown:
            raise KeyError(f"not summary.json keys: {sorted(unknown)}")
        self.fields.update(fields)

    def write(self, **fields) -> None:
        self.update(**fields)
        if self.writes:
            write_json_atomic(self.path, self.fields)

    def add_notes(self, *notes: str) -> None:
        """Append plain-language facts to ``notes`` and write."""
        self.write(notes=[*self.fields["notes"], *notes])


def save_model(model, tokenizer, output_dir: Path, verify: Callable[[Path], None] | None = None,
               files: dict[str, str] | None = None) -> Path:
    """``save_pretrained`` (and ``files``: name -> text, records that travel with the weights) into
    ``model.tmp/``, run ``verify`` on it, then rename to ``model/``."""
    final = output_dir / MODEL_DIR
    tmp = output_dir / f"{MODEL_DIR}.tmp"
    for stale in (tmp, final):
        if stale.exists():
            shutil.rmtree(stale)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    if verify is not None:
        verify(tmp)
    os.replace(tmp, final)
    return final


def _plain(value):
    """numpy / torch scalars and paths as JSON values."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
