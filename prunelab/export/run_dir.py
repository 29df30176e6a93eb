"""Export a saved prunelab run: ``RUN_DIR/model`` -> ``RUN_DIR/export/``.

``RUN_DIR/export/`` holds ``export.json`` and what each export backend writes (``backends.py``):
``model/`` (torch: the compacted model, ``load_compacted`` reloads it, with the tokenizer files
copied beside it), ``model.onnx`` (onnxruntime), ``quantized/`` (openvino: its int8 model).
Everything is written into ``export.tmp/`` and renamed once checked, so an ``export/`` directory is
always whole.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from prunelab.export.backends import BACKENDS, Backend, Settings, backend_classes
from prunelab.export.compaction import compact, count_parameters
from prunelab.export.latency import measure
from prunelab.export.onnx_export import as_arrays, example_inputs, max_abs_diff, torch_outputs
from prunelab.export.storage import WEIGHT_FILES, load_compacted

EXPORT_DIR = "export"
FORMAT = "prunelab.export/1"
DEFAULT_BACKENDS = ("torch", "onnxruntime")


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
    backends: tuple[str, ...] = DEFAULT_BACKENDS,
    exporter: str = "dynamo",
    tolerance: float = 1e-4,
    int8: Callable[[torch.nn.Module], object] | None = None,
    evaluate: Callable[[object], dict] | None = None,
) -> dict:
    """Compact ``RUN_DIR/model``; have every backend in ``backends`` (names in ``BACKENDS``) write
    it, read it back and check its logits against the saved (masked) model; measure latencies;
    returns what ``export.json`` holds.

    int8: makes the int8 model of the compacted one (a ``prunelab.quant.QuantizedModel``, e.g.
    ``lambda m: prunelab.quant.quantize(m, "static", batches)``) for the backends that run it
    (``openvino``); its logits differ from the float model's by rounding, so that gap is reported,
    not held to ``tolerance``. evaluate: metrics of a model-like callable on the task's eval set,
    recorded for the compacted model and its int8 one."""
    chosen = [cls() for cls in backend_classes(backends)]
    int8_users = [backend.name for backend in chosen if backend.needs_int8]
    if int8_users and int8 is None:
        raise ValueError(f"backends {', '.join(int8_users)}: run the int8 model of the compacted one; pass int8=")
    run_dir = Path(run_dir)
    source = model_dir_of(run_dir)
    final = Path(output) if output is not None else run_dir / EXPORT_DIR
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        settings = Settings(source, threads, exporter)
        report = _export(source, tmp, chosen, settings, runs, tuple(batch_sizes), sequence, tolerance, int8, evaluate)
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


def _export(source, out, backends: list[Backend], settings: Settings, runs, batch_sizes, sequence, tolerance, int8,
            evaluate) -> dict:
    dense = load_compacted(source)
    try:
        compaction = compact(dense)
    except ValueError as error:
        raise ExportError(f"{source}: {error}") from error
    compacted = compaction.model.eval()
    check = example_inputs(dense, batch=4, sequence=min(32, sequence))
    reference = torch_outputs(dense, check)
    diffs = {"torch_compacted": max_abs_diff(reference, torch_outputs(compacted, check))}

    quantized = int8(compacted) if any(backend.needs_int8 for backend in backends) else None
    # Every registered backend's key is present (null when not listed): one shape for all exports.
    records = {cls.record_key: None for cls in BACKENDS.values()}
    runners = {}
    for backend in backends:
        try:
            record = backend.save(quantized if backend.needs_int8 else compacted, out, settings)
            runner = backend.load(out, settings)
        except ImportError as error:
            raise ExportError(f"export backend {backend.name}: {error}; install {', '.join(backend.packages)} "
                              "or leave it out of the backends") from error
        with torch.no_grad():
            diff = max_abs_diff(reference, as_arrays(runner(check)))
        if backend.check_key is None:
            record["max_abs_logit_diff_to_float"] = diff
        else:
            diffs[backend.check_key] = diff
        records[backend.record_key] = record
        runners[backend.latency_key] = runner
    worst = max(diffs.values())
    if worst > tolerance:
        raise ExportError(f"{source}: the exported model's logits differ from the saved model's by {worst:.3g} > {tolerance:g} ({diffs})")

    metrics = None
    if evaluate is not None:
        metrics = {"compacted": evaluate(compacted), **({"int8": evaluate(quantized)} if quantized is not None else {})}

    removed = compaction.structure_removed
    latency = measure(dense, runners, batch_sizes, sequence, runs, settings.threads) if runs > 0 else None
    # Only removed structure can make the model faster, and only a gain measured in the dense
    # model's own runtime is compaction's (another runtime's ratio holds its own speed too).
    compared = [f"{backend.latency_key}_ratio" for backend in backends if backend.like_for_like]
    return {
        "format": FORMAT,
        "model_class": type(dense).__name__,
        "backends": [backend.name for backend in backends],
        "structure_removed": removed,
        "speedup_claimed": bool(removed and latency and compared and all(
            row[key] < 1.0 for name, row in latency.items() if name.startswith("batch_") for key in compared
        )),
        "note": _note(compaction, dense.config),
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
        **records,
        "metrics": metrics,
        "latency": latency,
        "versions": _versions(backends),
    }


def _note(compaction, config) -> str:
    removed = compaction.removed
    # With grouped-query attention a head unit is one key/value head and the query heads sharing it.
    grouped = getattr(config, "num_key_value_heads", None) not in (None, getattr(config, "num_attention_heads", None))
    heads = "key/value head groups" if grouped else "attention heads"
    if not compaction.structure_removed:
        return (
            "nothing removable: no whole attention head or FFN neuron is zero, so the compacted model has the "
            "dense shapes. Zeros inside kept rows (1x1, 4x1, 2:4 ...) are computed as dense by torch and ONNX "
            "Runtime alike: no speedup is claimed; latency ratios only show measurement noise and runtime differences."
        )
    return (
        f"removed {removed['heads']} of {removed['heads_total']} {heads} and {removed['neurons']} of "
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


def _versions(backends: list[Backend]) -> dict:
    versions = {"torch": torch.__version__}
    for name in ("transformers", *(package for backend in backends for package in backend.packages)):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            continue
    return versions
