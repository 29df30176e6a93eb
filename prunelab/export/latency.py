"""Forward-pass latency: median wall time of repeated runs, torch and ONNX Runtime, same inputs."""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from prunelab.export.onnx_export import example_inputs, run_ort


def median_ms(call: Callable[[], object], runs: int, warmup: int = 2) -> float:
    """Median milliseconds of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure(
    dense: torch.nn.Module,
    compacted: torch.nn.Module,
    session=None,
    batch_sizes: tuple[int, ...] = (1, 32),
    sequence: int = 128,
    runs: int = 20,
    threads: int = 2,
) -> dict:
    """Per batch size: torch dense, torch compacted and (with ``session``) ORT compacted medians in
    ms, each also as a ratio to dense measured in the same process moments before."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = {}
        for batch in batch_sizes:
            inputs = example_inputs(dense, batch, sequence, seed=batch)
            with torch.inference_mode():
                row = {
                    "torch_dense_ms": median_ms(lambda: dense(**inputs), runs),
                    "torch_compacted_ms": median_ms(lambda: compacted(**inputs), runs),
                }
            if session is not None:
                row["ort_compacted_ms"] = median_ms(lambda: run_ort(session, inputs), runs)
            base = row["torch_dense_ms"]
            for key in [k for k in row if k != "torch_dense_ms"]:
                row[key.replace("_ms", "_ratio")] = row[key] / base if base else None
            results[f"batch_{batch}"] = row
        return {
            # Other processes on the machine skew multi-threaded timings badly (OpenMP threads wait
            # on each other): the load average says how busy the machine was.
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "sequence_length": sequence,
            "threads": threads,
            "runs": runs,
            "statistic": "median of runs after 2 warm-up calls, ms",
            **results,
        }
    finally:
        torch.set_num_threads(previous)
