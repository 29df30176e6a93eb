"""Forward-pass latency: median wall time of interleaved runs, torch dense and every export backend, same inputs."""
from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Mapping

import torch

from prunelab.export.onnx_export import example_inputs


def interleaved_medians(calls: Mapping[str, Callable[[], object]], runs: int, warmup: int = 2, seed: int = 0) -> dict[str, float]:
    """Median milliseconds of each call over ``runs`` rounds after ``warmup`` untimed ones. Each
    round runs every call once, in a fresh seeded random order, so a change of machine load (or
    what one runtime leaves behind for the next call) hits all of them alike and their ratios hold:
    timed one after another, the same model moved by more than 2x between measurements."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    order = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(runs):
        for name in order.sample(names, len(names)):
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(taken) for name, taken in times.items()}


def measure(
    dense: torch.nn.Module,
    runners: Mapping[str, Callable[[dict[str, torch.Tensor]], object]],
    batch_sizes: tuple[int, ...] = (1, 32),
    sequence: int = 128,
    runs: int = 20,
    threads: int = 2,
) -> dict:
    """Per batch size: torch dense and each of ``runners`` (latency key -> one batch in, outputs
    out: ``Backend.load``), medians in ms timed interleaved, each runner also as a ratio to dense."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = {}
        for batch in batch_sizes:
            inputs = example_inputs(dense, batch, sequence, seed=batch)
            calls = {"torch_dense": lambda: dense(**inputs)}
            calls.update({key: (lambda run=run: run(inputs)) for key, run in runners.items()})
            with torch.inference_mode():
                medians = interleaved_medians(calls, runs)
            base = medians["torch_dense"]
            row = {f"{name}_ms": value for name, value in medians.items()}
            row.update({f"{name}_ratio": value / base if base else None for name, value in medians.items() if name != "torch_dense"})
            results[f"batch_{batch}"] = row
        return {
            # Other processes on the machine skew multi-threaded timings badly (OpenMP threads wait
            # on each other): the load average says how busy the machine was.
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "sequence_length": sequence,
            "threads": threads,
            "runs": runs,
            "statistic": "median of runs, interleaved in a random order per round, after 2 warm-up rounds, ms",
            **results,
        }
    finally:
        torch.set_num_threads(previous)
