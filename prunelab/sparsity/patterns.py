"""How the weights of one op group into prunable units, and how pruned units become a mask.

Every op is seen as a 2-D matrix ``[out, in]`` (see ``ops.OpView``). A pattern cuts that matrix
into *units*, the things a criterion scores and a selection prunes whole:

* ``NxM`` (``BlockPattern``): blocks of N consecutive output rows x M consecutive input columns
  (INC's meaning: ``4x1`` = 4 rows x 1 column). ``1x1`` is unstructured, ``1xchannel`` prunes
  whole output rows, ``channelx1`` whole input columns.
* ``N:M`` (``NInMPattern``): in every M consecutive weights along the input dim, N are pruned.
  A unit is one group of M; pruning it zeroes the N lowest-scoring weights of the group, so the
  pattern can prune at most N/M of an op.

Pattern objects hold no tensors; every method is a pure function of its arguments.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod

import torch

# Score given to units that are already pruned, so every selection takes them first and masks
# only ever grow. Finite (unlike -inf) so that arithmetic on score buffers stays NaN-free.
PRUNED_SCORE = -1e20

PATTERN_FORMS = '"1x1", "NxM" (e.g. "4x1", "2x2", "1x4"), "1xchannel", "channelx1", "N:M" (e.g. "2:4", also written "2in4")'


def with_pruned_last(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``scores`` with every pruned position (``keep == 0``) moved to ``PRUNED_SCORE``.

    Arithmetic rather than ``masked_fill``: exact for kept positions and several times faster on CPU.
    """
    return torch.add(scores, keep - 1, alpha=-PRUNED_SCORE)


class Pattern(ABC):
    """A way to cut an ``[out, in]`` weight matrix into prunable units."""

    name: str
    max_fraction: float  # the largest fraction of an op's weights this pattern can prune

    @abstractmethod
    def fits(self, rows: int, cols: int) -> bool:
        """Whether a ``[rows, cols]`` matrix divides evenly into this pattern's units."""

    @abstractmethod
    def unit_weight(self, rows: int, cols: int) -> int:
        """Number of weights zeroed when one unit is pruned."""

    @abstractmethod
    def unit_count(self, rows: int, cols: int) -> int:
        """Number of units in a ``[rows, cols]`` matrix."""

    @abstractmethod
    def reduce(self, elementwise: torch.Tensor) -> torch.Tensor:
        """Fold a ``[rows, cols]`` element-wise score into the criterion state this pattern keeps."""

    @abstractmethod
    def unit_scores(self, state: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Flat per-unit scores (mean per weight; already-pruned units at ``PRUNED_SCORE``).

        ``keep`` is the current ``[rows, cols]`` mask (1 kept, 0 pruned). Returns the scores and
        an opaque helper that ``keep_from_pruned`` needs.
        """

    @abstractmethod
    def keep_from_pruned(self, pruned: torch.Tensor, helper: object, rows: int, cols: int) -> torch.Tensor:
        """``[rows, cols]`` keep mask (1 kept, 0 pruned) from flat per-unit 0/1 pruned flags."""

    @abstractmethod
    def expand(self, per_unit: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Copy a flat per-unit value onto every element of its unit: ``[rows, cols]``."""

    def __str__(self) -> str:
        return self.name


class BlockPattern(Pattern):
    """N consecutive output rows x M consecutive input columns; ``None`` means the whole dim."""

    max_fraction = 1.0

    def __init__(self, name: str, block_rows: int | None, block_cols: int | None):
        self.name = name
        self.block_rows = block_rows
        self.block_cols = block_cols

    def block(self, rows: int, cols: int) -> tuple[int, int]:
        return (self.block_rows or rows, self.block_cols or cols)

    def fits(self, rows: int, cols: int) -> bool:
        block_rows, block_cols = self.block(rows, cols)
        return rows % block_rows == 0 and cols % block_cols == 0

    def unit_weight(self, rows: int, cols: int) -> int:
        block_rows, block_cols = self.block(rows, cols)
        return block_rows * block_cols

    def unit_count(self, rows: int, cols: int) -> int:
        return rows * cols // self.unit_weight(rows, cols)

    def reduce(self, elementwise: torch.Tensor) -> torch.Tensor:
        """Per-block sums ``[rows/N, cols/M]`` (divided by the block size in ``unit_scores``)."""
        rows, cols = elementwise.shape
        block_rows, block_cols = self.block(rows, cols)
        if block_rows == block_cols == 1:
            return elementwise
        blocks = elementwise.reshape(rows // block_rows, block_rows, cols // block_cols, block_cols)
        return blocks.sum(dim=(1, 3))

    def unit_scores(self, state, keep):
        block_rows, block_cols = self.block(*keep.shape)
        # Blocks are pruned whole, so a block's first element tells its state.
        block_keep = keep[::block_rows, ::block_cols]
        mean = state.float() if block_rows * block_cols == 1 else state.float() / (block_rows * block_cols)
        return with_pruned_last(mean, block_keep).reshape(-1), None

    def expand(self, per_unit, rows, cols):
        block_rows, block_cols = self.block(rows, cols)
        grid = per_unit.reshape(rows // block_rows, 1, cols // block_cols, 1)
        return grid.expand(-1, block_rows, -1, block_cols).reshape(rows, cols)

    def keep_from_pruned(self, pruned, helper, rows, cols):
        return 1.0 - self.expand(pruned, rows, cols)


class NInMPattern(Pattern):
    """N of every M consecutive weights along the input dim are pruned."""

    def __init__(self, name: str, n: int, m: int):
        self.name = name
        self.n = n
        self.m = m
        self.max_fraction = n / m

    def fits(self, rows: int, cols: int) -> bool:
        return cols % self.m == 0

    def unit_weight(self, rows: int, cols: int) -> int:
        return self.n

    def unit_count(self, rows: int, cols: int) -> int:
        return rows * cols // self.m

    def reduce(self, elementwise: torch.Tensor) -> torch.Tensor:
        """Kept element-wise: which N of a group go depends on the individual scores."""
        return elementwise

    def unit_scores(self, state, keep):
        rows, cols = keep.shape
        scores = with_pruned_last(state.float(), keep)
        # A group's cost is the mean score of its N lowest weights, the ones it would lose;
        # already-pruned weights sit at PRUNED_SCORE, so a pruned group keeps its choice.
        lowest, lowest_index = scores.reshape(rows, cols // self.m, self.m).topk(self.n, dim=-1, largest=False)
        return lowest.mean(dim=-1).reshape(-1), lowest_index

    def expand(self, per_unit, rows, cols):
        groups = per_unit.reshape(rows, cols // self.m, 1)
        return groups.expand(-1, -1, self.m).reshape(rows, cols)

    def keep_from_pruned(self, pruned, helper, rows, cols):
        lowest_index = helper
        groups = pruned.reshape(rows, cols // self.m, 1).to(torch.float32)
        dropped = torch.zeros(rows, cols // self.m, self.m, dtype=torch.float32, device=pruned.device)
        dropped.scatter_(-1, lowest_index, groups.expand(-1, -1, self.n))
        return (1.0 - dropped).reshape(rows, cols)


_BLOCK = re.compile(r"^(\d+)x(\d+)$")
_N_IN_M = re.compile(r"^(\d+)(?::|in)(\d+)$")


def parse_pattern(value: object, where: str = "pattern") -> Pattern:
    """Build a pattern from its config string; raise ``ValueError`` naming ``where`` if invalid."""
    if isinstance(value, bool) or isinstance(value, int):
        raise ValueError(
            f"{where}={value!r} is an integer. YAML 1.1 reads an unquoted 2:4 as the base-60 number "
            f'124: quote it ("2:4") or write 2in4. Allowed patterns: {PATTERN_FORMS}.'
        )
    if not isinstance(value, str):
        raise ValueError(f"{where}={value!r} must be a string; allowed: {PATTERN_FORMS}.")
    text = value.strip().lower()
    if text == "1xchannel":
        return BlockPattern("1xchannel", 1, None)
    if text == "channelx1":
        return BlockPattern("channelx1", None, 1)
    block = _BLOCK.match(text)
    if block and int(block[1]) >= 1 and int(block[2]) >= 1:
        return BlockPattern(f"{int(block[1])}x{int(block[2])}", int(block[1]), int(block[2]))
    n_in_m = _N_IN_M.match(text)
    if n_in_m and 1 <= int(n_in_m[1]) < int(n_in_m[2]):
        return NInMPattern(f"{int(n_in_m[1])}:{int(n_in_m[2])}", int(n_in_m[1]), int(n_in_m[2]))
    raise ValueError(f"{where}={value!r} is not a pattern; allowed: {PATTERN_FORMS} (N:M needs 1 <= N < M).")
