"""When masks are updated and to which sparsity: pure functions of the optimizer step.

Mask updates happen at steps ``start + k * frequency`` for ``k = 0..K``, ``K = (end - start) //
frequency`` (INC's timing). Update ``k`` targets ``decay(s0, S, k / K)``; update 0 therefore prunes
to s0 (``initial_sparsity``: 0 by default, so it prunes nothing; oBERT's recipes jump to 0.7 there)
and update K reaches the target S exactly. ``K == 0`` (``start == end``, or a
window shorter than one period) is one-shot: a single update at ``start`` straight to S.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def linear(s0: float, target: float, t: float) -> float:
    """``s0 + (S - s0) * t``."""
    return s0 + (target - s0) * t


def cos(s0: float, target: float, t: float) -> float:
    """``s0 + (S - s0) * (1 - cos(pi * t / 2))``: slow start, fast finish (INC "cos")."""
    return s0 + (target - s0) * (1.0 - math.cos(math.pi * t / 2.0))


def exp(s0: float, target: float, t: float) -> float:
    """``1 - (1 - s0) * ((1 - S) / (1 - s0)) ** t``: the density shrinks by a constant factor per
    update (INC "exp", its default)."""
    return 1.0 - (1.0 - s0) * ((1.0 - target) / (1.0 - s0)) ** t


def cube(s0: float, target: float, t: float) -> float:
    """``s0 + (S - s0) * t ** 3``: INC's "cube", a slow start with most pruning at the end."""
    return s0 + (target - s0) * t**3


def cubic(s0: float, target: float, t: float) -> float:
    """``S + (s0 - S) * (1 - t) ** 3``: Zhu & Gupta (2017), as in SparseML and torch's pruning
    schedulers; a fast start that levels off at the target."""
    return target + (s0 - target) * (1.0 - t) ** 3


DECAYS = {"linear": linear, "cos": cos, "exp": exp, "cube": cube, "cubic": cubic}


@dataclass(frozen=True)
class Schedule:
    """The update steps and the sparsity each one targets."""

    start: int
    end: int
    frequency: int
    decay: str
    target: float
    initial: float = 0.0

    @property
    def last_index(self) -> int:
        """K: the index of the final update."""
        return (self.end - self.start) // self.frequency

    @property
    def last_update_step(self) -> int:
        return self.start + self.last_index * self.frequency

    @property
    def first_pruning_step(self) -> int:
        """The first update that prunes anything (update 0 of an iterative schedule is s0)."""
        return self.start if self.last_index == 0 or self.initial > 0 else self.start + self.frequency

    @property
    def pruning_steps(self) -> list[int]:
        """The steps of the updates that prune (all but update 0 when s0 is 0)."""
        first = 0 if self.last_index == 0 or self.initial > 0 else 1
        return [self.start + k * self.frequency for k in range(first, self.last_index + 1)]

    def update_index(self, step: int) -> int | None:
        """k when ``step`` is an update step, else None."""
        offset = step - self.start
        if offset < 0 or step > self.last_update_step or offset % self.frequency:
            return None
        return offset // self.frequency

    def sparsity_at_update(self, index: int) -> float:
        if self.last_index == 0:
            return self.target
        return DECAYS[self.decay](self.initial, self.target, index / self.last_index)

    def sparsity_at(self, step: int) -> float:
        """The target of the latest update at or before ``step`` (0 before the first)."""
        if step < self.start:
            return 0.0
        index = min((step - self.start) // self.frequency, self.last_index)
        return self.sparsity_at_update(index)
