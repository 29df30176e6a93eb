"""The ``export`` config group: what the run does with ``prunelab.export`` after saving its model.

``none`` (``NoExport``) stops at ``model/``. ``compact`` (``CompactExport``) cuts the pruned attention heads and FFN neurons out of
the saved model (exactly), has every backend of ``backends`` (``prunelab.export.backends``) write
the result, checks every copy's logits against the saved model and measures latencies:
``<run dir>/export/`` with ``export.json``, the same as ``python -m prunelab.export RUN_DIR``
afterwards. The ``openvino`` backend runs the int8 model of the compacted one, which the run's
``quant=dynamic|static`` makes (``export/quantized/``); it is evaluated on the eval set beside the
compacted float model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.export.backends import backend_classes
from prunelab.export.run_dir import DEFAULT_BACKENDS, export_run



class NoExport:
    """``export=none``: the run ends with ``model/``."""

    enabled = False  # the config checks and the export stage read this, never the option's name
    int8_backends: list[str] = []


@dataclass
class CompactExport:
    """``export=compact``. backends: export backends (names in prunelab.export.backends.BACKENDS),
    each writing, checking and timing the compacted model; latency_runs: timed runs per latency
    figure (0: no latency measurement); batch_sizes / sequence: latency inputs (examples, tokens);
    threads: CPU threads for the latency figures."""

    enabled = True
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    latency_runs: int = 20
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    sequence: int = 128
    threads: int = 2

    def __post_init__(self):
        if self.latency_runs < 0 or self.sequence < 1 or self.threads < 1 or not self.batch_sizes \
                or min(self.batch_sizes) < 1:
            raise ConfigError(
                f"export: latency_runs={self.latency_runs} (>= 0), batch_sizes={list(self.batch_sizes)} (positive), "
                f"sequence={self.sequence} and threads={self.threads} (>= 1) out of range"
            )
        try:
            self._classes = backend_classes(self.backends)
        except ValueError as error:
            raise ConfigError(f"export.backends=[{', '.join(map(str, self.backends))}]: {error}") from None

    @property
    def int8_backends(self) -> list[str]:
        """The listed backends that run the int8 model of the compacted one (the run's quant
        option must be able to make it: ``converts_compacted``)."""
        return [cls.name for cls in self._classes if cls.needs_int8]

    def run(self, run_dir: Path, int8=None, evaluate=None) -> dict:
        """``int8`` / ``evaluate``: as ``prunelab.export.export_run`` takes them (the run's quant
        stage applied to the compacted model; the run's eval set)."""
        return export_run(run_dir, runs=self.latency_runs, batch_sizes=tuple(self.batch_sizes), sequence=self.sequence,
                          threads=self.threads, backends=tuple(self.backends), int8=int8, evaluate=evaluate)
