"""Export a saved prunelab run: ``RUN_DIR/model`` -> ``RUN_DIR/export/``.

``RUN_DIR/export/`` holds ``model/`` (the compacted model, ``load_compacted`` reloads it, with the
tokenizer files copied beside it), ``model.onnx``, ``quantized/`` (its int8 model, when asked for)
and ``export.json``. Everything is written into
``export.tmp/`` and renamed once checked, so an ``export/`` directory is always whole.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from prunelab.export.compaction import compact, count_parameters
from prunelab.export.latency import measure
from prunelab.export.onnx_export import (
    example_inputs,
    export_onnx,
    max_abs_diff,
    ort_session,
    run_ort,
    torch_outputs,
)
from prunelab.export.storage import WEIGHT_FILES, load_compacted, save_compacted

EXPORT_DIR = "export"
QUANTIZED_DIR = "quantized"  # the int8 compacted model, inside EXPORT_DIR
FORMAT = "prunelab.export/1"
NOT_COPIED = {"config.json", "generation_config.json", *WEIGHT_FILES}


class ExportError(RuntimeError):
    """A run that cannot be exported, or whose export does not match it: one line for the CLI."""


def model_dir_of(run_dir: Path) -> Path:
    """``RUN_DIR/model`` (a prunelab run), or ``RUN_DIR`` itself if it is a model directory."""
    if (run_dir / "model" / "config.json").exists():
        return run_dir / "model"
    if (run_dir / "config.json").exists() and any((run_dir / name).exists() for name in WEIGHT_FILES):
        return run_dir
    raise ExportError(f"{run_dir}: no saved model (expected {run_dir / 'model'}/config.json, a save_pretrained directory)")


def export_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    runs: int = 20,
    batch_sizes: tuple[int, ...] = (1, 32),
    sequence: int = 128,
    threads: int = 2,
    onnx: bool = True,
    exporter: str = "dynamo",
    tolerance: float = 1e-4,
    int8: Callable[[torch.nn.Module], object] | None = None,
    evaluate: Callable[[object], dict] | None = None,
) -> dict:
    """Compact ``RUN_DIR/model``, save it, export it to ONNX, check every copy's logits against the
    saved (masked) model, measure latencies; returns what ``export.json`` holds.

    int8: makes the int8 model of the compacted one (a ``prunelab.quant.QuantizedModel``, e.g.
    ``lambda m: prunelab.quant.quantize(m, "static", batches)``): saved to ``quantized/``, timed
    with the others; its logits differ from the float model's by rounding, so that gap is reported,
    not held to ``tolerance``. evaluate: metrics of a model-like callable on the task's eval set,
    recorded for the compacted model and its int8 one."""
    run_dir = Path(run_dir)
    source = model_dir_of(run_dir)
    final = Path(output) if output is not None else run_dir / EXPORT_DIR
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        report = _export(source, tmp, runs, tuple(batch_sizes), sequence, threads, onnx, exporter, tolerance, int8, evaluate)
        report["source"] = str(source)
        report["run"] = _run_summary(run_dir)
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return report


def _export(source, out, runs, batch_sizes, sequence, threads, onnx, exporter, tolerance, int8, evaluate) -> dict:
    dense = load_compacted(source)
    try:
        compaction = compact(dense)
    except ValueError as error:
        raise ExportError(f"{source}: {error}") from error
    compacted = compaction.model.eval()
    check = example_inputs(dense, batch=4, sequence=min(32, sequence))
    reference = torch_outputs(dense, check)
    diffs = {"torch_compacted": max_abs_diff(reference, torch_outputs(compacted, check))}

    save_compacted(compaction, out / "model")
    for path in source.iterdir():  # tokenizer files (and anything else that is not weights/config)
        if path.is_file() and path.name not in NOT_COPIED and not path.name.endswith((".safetensors", ".bin")):
            shutil.copy2(path, out / "model" / path.name)
    diffs["reloaded"] = max_abs_diff(reference, torch_outputs(load_compacted(out / "model"), check))

    session, onnx_info = None, None
    if onnx:
        onnx_info = export_onnx(compacted, out / "model.onnx", exporter=exporter)
        session = ort_session(out / "model.onnx", threads, spinning=False)  # timed interleaved with torch
        diffs["onnxruntime"] = max_abs_diff(reference, run_ort(session, check))
    worst = max(diffs.values())
    if worst > tolerance:
        raise ExportError(f"{source}: the exported model's logits differ from the saved model's by {worst:.3g} > {tolerance:g} ({diffs})")

    quantized, quantized_info = None, None
    if int8 is not None:
        quantized = int8(compacted)
        quantized.save(out / QUANTIZED_DIR, overwrite=True)
        quantized_info = {
            "approach": quantized.approach, "dir": QUANTIZED_DIR, "size_bytes": quantized.size_bytes,
            "max_abs_logit_diff_to_float": max_abs_diff(reference, [np.asarray(v) for v in quantized(**check).values()]),
            "load": f"prunelab.quant.load_quantized('<this dir>/{QUANTIZED_DIR}')",
        }
    metrics = None
    if evaluate is not None:
        metrics = {"compacted": evaluate(compacted), **({"int8": evaluate(quantized)} if quantized is not None else {})}

    removed = compaction.structure_removed
    latency = measure(dense, compacted, session, batch_sizes, sequence, runs, threads, quantized) if runs > 0 else None
    return {
        "format": FORMAT,
        "model_class": type(dense).__name__,
        "structure_removed": removed,
        # Only removed structure can make the model faster, and only a measured gain is claimed.
        "speedup_claimed": bool(removed and latency and all(
            row["torch_compacted_ratio"] < 1.0 for key, row in latency.items() if key.startswith("batch_")
        )),
        "note": _note(compaction),
        "parameters": {
            "before": compaction.parameters_before,
            "after": count_parameters(compacted),
            "ratio": count_parameters(compacted) / compaction.parameters_before,
        },
        "removed": compaction.removed,
        "layers": compaction.layers(),
        "max_abs_logit_diff": worst,
        "logit_diffs": diffs,
        "tolerance": tolerance,
        "check_inputs": {"batch": 4, "sequence": min(32, sequence), "padding": "last quarter of every other row"},
        "onnx": onnx_info,
        "quantized": quantized_info,
        "metrics": metrics,
        "latency": latency,
        "versions": _versions(),
        "load": "prunelab.export.load_compacted('<this dir>/model')",
    }


def _note(compaction) -> str:
    removed = compaction.removed
    if not compaction.structure_removed:
        return (
            "nothing removable: no whole attention head or FFN neuron is zero, so the compacted model has the "
            "dense shapes. Zeros inside kept rows (1x1, 4x1, 2:4 ...) are computed as dense by torch and ONNX "
            "Runtime alike: no speedup is claimed; latency ratios only show measurement noise and runtime differences."
        )
    return (
        f"removed {removed['heads']} of {removed['heads_total']} attention heads and {removed['neurons']} of "
        f"{removed['neurons_total']} FFN neurons; the remaining zeros (if any) stay in the weights"
    )


def _run_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # Not its status: an export=compact stage runs before its own run is marked completed.
    keys = ("task", "model", "pattern", "pruning_type", "target_sparsity", "main_metric", "metrics")
    return {key: summary.get(key) for key in keys}


def _versions() -> dict:
    versions = {"torch": torch.__version__}
    for name in ("transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            continue
    return versions
