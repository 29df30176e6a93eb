"""Compaction and ONNX export of pruned transformers encoders (no Hydra; torch, transformers, ONNX).

    from prunelab.export import compact, save_compacted, load_compacted, export_onnx

    result = compact(model)                  # heads/neurons whose weights are zero, cut out exactly
    save_compacted(result, "out/model")      # save_pretrained + the per-layer structure in config.json
    model = load_compacted("out/model")      # any process: rebuilds the layers, loads strictly
    export_onnx(result.model, "out/model.onnx")

``python -m prunelab.export RUN_DIR`` does all of it for a saved run and writes
``RUN_DIR/export/``, one part per export backend (``BACKENDS``; see ``docs/compaction.md``).
"""
from prunelab.export.backends import BACKENDS, Backend
from prunelab.export.compaction import (
    RECORD_KEY,
    BiasOnly,
    Compaction,
    EmptyBlock,
    StructurePlan,
    compact,
    count_parameters,
    plan_compaction,
    rebuild,
)
from prunelab.export.onnx_export import export_onnx, ort_session, run_ort
from prunelab.export.run_dir import ExportError, export_run
from prunelab.export.storage import load_compacted, save_compacted

__all__ = [
    "BACKENDS",
    "RECORD_KEY",
    "Backend",
    "BiasOnly",
    "Compaction",
    "EmptyBlock",
    "ExportError",
    "StructurePlan",
    "compact",
    "count_parameters",
    "export_onnx",
    "export_run",
    "load_compacted",
    "ort_session",
    "plan_compaction",
    "rebuild",
    "run_ort",
    "save_compacted",
]
