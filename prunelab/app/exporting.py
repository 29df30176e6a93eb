"""The ``export`` config group: what the run does with ``prunelab.export`` after saving its model.

``none`` stops at ``model/``. ``compact`` cuts the pruned attention heads and FFN neurons out of
the saved model (exactly), exports the result to ONNX, checks every copy's logits against the
saved model and measures latencies: ``<run dir>/export/`` with ``export.json``, the same as
``python -m prunelab.export RUN_DIR`` afterwards. With ``quant=dynamic|static`` the run also
quantizes the compacted model the same way (``export/quantized/``), evaluates both on the eval set
and times the int8 one beside the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import ConfigError

KINDS = ("none", "compact")


@dataclass
class Export:
    """kind: none | compact; onnx: also write model.onnx (ONNX Runtime); latency_runs: timed runs
    per latency figure (0: no latency measurement); batch_sizes / sequence: latency inputs
    (examples, tokens); threads: CPU threads for the latency figures."""

    kind: str = "none"
    onnx: bool = True
    latency_runs: int = 20
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    sequence: int = 128
    threads: int = 2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"export.kind={self.kind}: allowed {', '.join(KINDS)}")
        if self.latency_runs < 0 or self.sequence < 1 or self.threads < 1 or not self.batch_sizes \
                or min(self.batch_sizes) < 1:
            raise ConfigError(
                f"export: latency_runs={self.latency_runs} (>= 0), batch_sizes={list(self.batch_sizes)} (positive), "
                f"sequence={self.sequence} and threads={self.threads} (>= 1) out of range"
            )

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def run(self, run_dir: Path, int8=None, evaluate=None) -> dict:
        """``int8`` / ``evaluate``: as ``prunelab.export.export_run`` takes them (the run's quant
        stage applied to the compacted model; the run's eval set)."""
        from prunelab.export import export_run  # onnx/onnxruntime load only when exporting

        return export_run(run_dir, runs=self.latency_runs, batch_sizes=tuple(self.batch_sizes),
                          sequence=self.sequence, threads=self.threads, onnx=self.onnx, int8=int8, evaluate=evaluate)
