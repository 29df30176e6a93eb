"""How the weights of one op group into prunable units, and how pruned units become a mask.

Every op is seen as a 2-D matrix ``[out, in]`` (see ``ops.OpView``). A pattern cuts that matrix
into *units*, the things a criterion scores and a selection prunes whole:

* ``NxM`` (``BlockPattern``): blocks of N consecutive output rows x M consecutive input columns
  (INC's meaning: ``4x1`` = 4 rows x 1 column). ``1x1`` is unstructured, ``1xchannel`` prunes
  whole output rows, ``channelx1`` whole input columns.
* ``N:M`` (``NInMPattern``): in every M consecutive weights along the input dim, N are pruned.
  A unit is one group of M; pruning it zeroes the N lowest-scoring weights of the group, so the
  pattern can prune at most N/M of an op.
* ``head`` and ``neuron`` (``CoupledPattern``): units that span several modules of a transformer
  layer (an attention head, an FFN neuron); their structure comes from ``coupling`` and their
  masks from ``coupled``, so the pattern object only names them.

Pattern objects hold no tensors; every method is a pure function of its arguments.
"""
from __future__ import annotations

import itertools
import re
from abc import ABC, abstractmethod

import torch

# Score given to units that are already pruned, so every selection takes them first and masks
# only ever grow. Finite (unlike -inf) so that arithmetic on score buffers stays NaN-free.
PRUNED_SCORE = -1e20

PATTERN_FORMS = (
    '"1x1", "NxM" (e.g. "4x1", "2x2", "1x4"), "1xchannel", "channelx1", "N:M" (e.g. "2:4", also written "2in4"), '
    '"head" (whole attention heads, INC: "mha"), "neuron" (whole FFN neurons)'
)


def with_pruned_last(scores: torch.Tensor, keep: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``scores`` with every pruned position (``keep == 0``) moved to ``PRUNED_SCORE``.

    Arithmetic rather than ``masked_fill``: exact for kept positions and several times faster on CPU.
    """
    return torch.add(scores, keep - 1, alpha=-PRUNED_SCORE, out=out)


class Pattern(ABC):
    """A way to cut an ``[out, in]`` weight matrix into prunable units."""

    name: str
    max_fraction: float  # the largest fraction of an op's weights this pattern can prune
    coupled = False  # units inside one op (``CoupledPattern`` units span several modules)

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
    def unit_scores(self, state: torch.Tensor, keep: torch.Tensor, out: torch.Tensor) -> object:
        """Write flat per-unit scores into ``out`` (mean per weight; already-pruned units at
        ``PRUNED_SCORE``) and return an opaque helper that ``write_keep`` needs.

        ``keep`` is the current ``[rows, cols]`` mask (1 kept, 0 pruned).
        """

    @abstractmethod
    def write_keep(self, target: torch.Tensor, pruned: torch.Tensor, helper: object) -> None:
        """Write the keep mask (1 kept, 0 pruned) for flat per-unit 0/1 ``pruned`` flags into the
        ``[rows, cols]`` tensor ``target`` (possibly a transposed view)."""

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

    def _blocks(self, matrix: torch.Tensor) -> torch.Tensor:
        """``[rows, cols]`` as ``[R, N, C, M]`` (a view: only splits dimensions)."""
        rows, cols = matrix.shape
        block_rows, block_cols = self.block(rows, cols)
        return matrix.view(rows // block_rows, block_rows, cols // block_cols, block_cols)

    def reduce(self, elementwise: torch.Tensor) -> torch.Tensor:
        """Per-block sums ``[R, C]`` (divided by the block size in ``unit_scores``)."""
        if self.block(*elementwise.shape) == (1, 1):
            return elementwise
        return self._blocks(elementwise).sum(dim=(1, 3))

    def unit_scores(self, state, keep, out):
        block_rows, block_cols = self.block(*keep.shape)
        # Blocks are pruned whole, so a block's first element tells its state.
        block_keep = keep[::block_rows, ::block_cols]
        mean = state.float() if block_rows * block_cols == 1 else state.float() / (block_rows * block_cols)
        with_pruned_last(mean, block_keep, out=out.view(block_keep.shape))

    def write_keep(self, target, pruned, helper):
        blocks = self._blocks(target)
        one = torch.ones((), dtype=target.dtype, device=target.device)
        per_block = pruned.view(blocks.shape[0], 1, blocks.shape[2], 1).expand(blocks.shape)
        torch.sub(one, per_block, out=blocks)  # keep = 1 - pruned, one pass straight into the target

    def expand(self, per_unit, rows, cols):
        block_rows, block_cols = self.block(rows, cols)
        grid = per_unit.reshape(rows // block_rows, 1, cols // block_cols, 1)
        return grid.expand(-1, block_rows, -1, block_cols).reshape(rows, cols)


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

    def _groups(self, matrix: torch.Tensor) -> torch.Tensor:
        rows, cols = matrix.shape
        return matrix.view(rows, cols // self.m, self.m)

    def _lowest_n(self, positions: torch.Tensor) -> torch.Tensor:
        """0/1 flags ``[M, rows, G]``: is position j among its group's N lowest (ties: first wins)?

        ``positions`` holds the scores position-major, ``[M, rows, G]``. A comparison network over
        the M positions, each comparison vectorised over all groups: rank_j = #{k < j: s_k <= s_j}
        + #{k > j: s_k < s_j}. Several times faster on CPU than ``topk``/``sort`` along a
        dimension of size M; the position-major layout keeps every comparison contiguous.
        """
        ranks = torch.empty_like(positions)
        for j in range(self.m):
            ranks[j].fill_(j)
        later_lower = torch.empty_like(positions[0])
        for j, k in itertools.combinations(range(self.m), 2):
            torch.lt(positions[k], positions[j], out=later_lower)
            ranks[j] += later_lower
            ranks[k] -= later_lower
        return torch.lt(ranks, self.n, out=ranks)

    def unit_scores(self, state, keep, out):
        # Already-pruned weights score lowest, so a pruned group keeps the weights it lost.
        positions = self._groups(with_pruned_last(state.float(), keep)).permute(2, 0, 1).contiguous()
        lowest = self._lowest_n(positions)
        # A group's cost is the mean score of the N weights it would lose.
        torch.sum(positions.mul_(lowest), dim=0, out=out.view(positions.shape[1:])).div_(self.n)
        return lowest

    def write_keep(self, target, pruned, helper):
        groups = self._groups(target)
        one = torch.ones((), dtype=target.dtype, device=target.device)
        # keep = 1 - lowest * group_pruned, in one pass straight into the (group-major) target
        torch.addcmul(one, helper.permute(1, 2, 0), pruned.view(*groups.shape[:2], 1), value=-1, out=groups)

    def expand(self, per_unit, rows, cols):
        groups = per_unit.reshape(rows, cols // self.m, 1)
        return groups.expand(-1, -1, self.m).reshape(rows, cols)


class CoupledPattern:
    """Whole structural units of a transformer layer, each spanning several modules.

    ``head``: one attention head = its rows (weights and biases) in the query, key and value
    projections plus its input columns in the attention output projection. ``neuron``: one FFN
    neuron = its row (and bias) in the intermediate projection plus its input column in the FFN
    output projection. Which modules those are comes from ``prunelab.sparsity.coupling``.
    """

    max_fraction = 1.0
    coupled = True

    def __init__(self, name: str):
        self.name = name

    def __str__(self) -> str:
        return self.name


# INC 2.x named multi-head-attention pruning "mha"; it is accepted and means "head".
COUPLED_PATTERNS = {"head": "head", "mha": "head", "neuron": "neuron"}

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
    if text in COUPLED_PATTERNS:
        return CoupledPattern(COUPLED_PATTERNS[text])
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
