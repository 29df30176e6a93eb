"""Pick the lowest-scoring units: exact counts, ties broken by position.

These are the only places where a mask update costs more than a few passes over the scores, so
they are written for speed: one order-statistic per call, never a full sort of large inputs.
"""
from __future__ import annotations

import math

import torch

try:  # numpy's selection is ~3x faster than torch.kthvalue on CPU; torch alone still works
    import numpy as np
except ImportError:  # pragma: no cover - numpy ships with every supported environment
    np = None

_SAMPLE_SIZE = 32768  # units sampled to bracket an order statistic before the exact pass
_SMALL = 65536  # below this many values, select directly


def kth_smallest(values: torch.Tensor, k: int) -> float:
    """The k-th smallest (1-based) entry of a flat tensor, exactly."""
    if not 1 <= k <= values.numel():
        raise ValueError(f"k={k} outside 1..{values.numel()}")
    if values.device.type == "cpu" and values.dtype == torch.float32 and np is not None:
        return _kth_smallest_numpy(values.numpy(), k)
    return float(torch.kthvalue(values.float(), k).values)


def _kth_smallest_numpy(values: "np.ndarray", k: int) -> float:
    """Bracket the answer with a random sample, then select exactly inside the bracket.

    The bracket is 5 sigma wide, so it misses the answer about once in a million calls; then the
    full exact selection runs instead. Either way the result is exact.
    """
    n = values.size
    if n <= _SMALL:
        return float(np.partition(values, k - 1)[k - 1])
    # A random (fixed-seed) sample: a strided one aliases with the row structure of scores
    # (e.g. every 8th input column), biases the bracket and forces the slow fallback.
    sample = values[np.random.default_rng(0).integers(0, n, _SAMPLE_SIZE)]
    m = sample.size
    q = k / n
    margin = 5.0 * math.sqrt(q * (1.0 - q) / m) + 2.0 / m
    lo_index = math.floor((q - margin) * m)
    hi_index = math.ceil((q + margin) * m)
    sample.partition([i for i in (lo_index, hi_index) if 0 <= i < m] or [0])
    lo = sample[lo_index] if lo_index >= 0 else -np.inf
    hi = sample[hi_index] if hi_index < m else np.inf
    rank = k - int(np.count_nonzero(values < lo))
    if rank >= 1:
        band = values[(values >= lo) & (values <= hi)]
        if rank <= band.size:
            return float(np.partition(band, rank - 1)[rank - 1])
    return float(np.partition(values, k - 1)[k - 1])


def lowest_k(values: torch.Tensor, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Float 0/1 flags marking exactly ``k`` lowest entries of a flat tensor.

    Ties at the threshold go to the earliest positions, so the count is exact and deterministic.
    """
    n = values.numel()
    if out is None:
        out = torch.empty(n, dtype=torch.float32, device=values.device)
    if k <= 0:
        return out.zero_()
    if k >= n:
        return out.fill_(1.0)
    threshold = kth_smallest(values, k)
    torch.le(values, threshold, out=out)
    taken = int(out.sum())
    if taken > k:
        tied = torch.nonzero(values == threshold).squeeze(1)
        out[tied[tied.numel() - (taken - k):]] = 0.0
    return out


def lowest_by_weight(values: torch.Tensor, weights: torch.Tensor, target: float) -> torch.Tensor:
    """Float 0/1 flags on the lowest units whose summed ``weights`` come closest to ``target``.

    For units of different sizes (whole rows of ops with different input widths), where counting
    units would miss the weight target. Sorts, so meant for modest unit counts.
    """
    flags = torch.zeros(values.numel(), dtype=torch.float32, device=values.device)
    if target <= 0 or values.numel() == 0:
        return flags
    order = torch.argsort(values, stable=True)
    cumulative = torch.cumsum(weights[order].double(), 0)
    over = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64, device=values.device)))
    count = over
    if over < cumulative.numel():
        below = float(cumulative[over - 1]) if over > 0 else 0.0
        if float(cumulative[over]) - target < target - below:
            count = over + 1
    flags[order[:count]] = 1.0
    return flags
