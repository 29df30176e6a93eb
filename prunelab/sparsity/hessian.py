"""Layer-wise pruning from the inputs a layer sees: Wanda and SparseGPT. Pure tensor functions.

A Linear op ``y = W x`` (``W``: ``[rows, cols]``, ``x``: ``[cols]``) is pruned to reconstruct its
outputs on calibration inputs ``X`` (``[cols, tokens]``): minimise ``||W X - W' X||^2`` over
masked ``W'``. The error is the quadratic form of ``H = 2 X X^T`` (the same in every row), so
everything needed is ``X X^T`` (SparseGPT) or its diagonal ``||X_j||^2`` (Wanda), accumulated one
batch at a time in float32 (``add_inputs``); no activation is stored.

- **Wanda** (Sun et al. 2023): ``score_ij = |W_ij| * ||X_j||_2``, the lowest pruned within each
  output row (N:M: within each group of M). No weight update.
- **SparseGPT** (Frantar & Alistarh 2023): OBS on ``H`` column by column, left to right. With
  ``U`` the upper Cholesky factor of ``H^-1``, removing column ``j`` from the remaining problem
  (columns ``>= j``) has the OBS saliency ``w^2 / [U]_jj^2`` (``[U]_jj^2`` is the diagonal of the
  inverse of the remaining Hessian: oBERT's single-weight score ``w^2 / (2 [F^-1]_jj)``, see
  ``fisher.unit_scores``) and the compensation ``W[:, j:] -= (w_j - q_j) / U_jj * U[j, j:]``. Lazy
  blocks of ``block_size`` columns keep the updates inside a block and push the block's errors to
  the columns after it in one matrix product. The mask is chosen per block (adaptive mask
  selection): per row, the lowest saliencies in the block up to the target (the counts rounded
  cumulatively, so every row ends at ``round(sparsity * cols)``); N:M picks the N lowest of every
  group of M when the block reaches the group. Everything is vectorised over rows; the loops are
  the paper's, over column blocks and the columns inside one.
"""
from __future__ import annotations

import torch

BYTES = 4  # statistics are float32


def add_inputs(statistic: torch.Tensor, inputs: torch.Tensor) -> None:
    """Fold ``inputs`` (``[tokens, cols]``) into ``statistic`` in place: ``X X^T`` (``[cols, cols]``)
    or, for a 1-d statistic, the squared column norms ``||X_j||^2`` (``[cols]``)."""
    x = inputs.to(torch.float32)
    if statistic.dim() == 1:
        statistic.add_(x.square().sum(dim=0))
    else:
        statistic.addmm_(x.t(), x)


def lowest_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool ``[rows, cols]``: the ``counts[r]`` lowest scores of each row ``r`` (ties: first wins)."""
    order = torch.argsort(scores, dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < counts.unsqueeze(1)


def lowest_in_groups(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool ``[rows, cols]``: the ``n`` lowest scores of every ``m`` consecutive columns."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    picked = torch.zeros_like(groups, dtype=torch.bool)
    picked.scatter_(2, torch.topk(groups, n, dim=2, largest=False).indices, True)
    return picked.reshape(rows, cols)


def _pruned_first(scores: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Already-pruned weights (``keep == 0``) score lowest, so masks only grow."""
    return scores if keep is None else scores.masked_fill(keep == 0, float("-inf"))


def wanda_mask(weight: torch.Tensor, squared_norms: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None,
               keep: torch.Tensor | None = None) -> torch.Tensor:
    """Keep mask (bool ``[rows, cols]``) of Wanda: per row ``round(sparsity * cols)`` weights with
    the lowest ``|W_ij| * ||X_j||``; ``n_m``: the N lowest of every group of M instead."""
    scores = _pruned_first(weight.float().abs() * squared_norms.sqrt().unsqueeze(0), keep)
    if n_m is not None:
        return ~lowest_in_groups(scores, *n_m)
    rows, cols = scores.shape
    counts = torch.full((rows,), round(sparsity * cols), device=scores.device)
    if keep is not None:
        counts = torch.maximum(counts, (keep == 0).sum(dim=1))
    return ~lowest_per_row(scores, counts)


def damped_hessian(gram: torch.Tensor, tokens: int, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, dead)``: ``H = 2 X X^T / tokens`` plus ``damp * mean(diag H)`` on the diagonal, and the
    columns no calibration input ever reached (``diag == 0``; their diagonal is set to 1 as in the
    reference, and their weights are zeroed by ``sparsegpt``)."""
    hessian = gram.to(torch.float32) * (2.0 / max(tokens, 1))
    diagonal = hessian.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    diagonal.add_(damp * float(diagonal.mean()))
    return hessian, dead


def inverse_cholesky_upper(hessian: torch.Tensor) -> torch.Tensor:
    """``U`` upper triangular with ``U^T U = H^-1``; ``ValueError`` if ``H`` is not positive definite."""
    factor, info = torch.linalg.cholesky_ex(hessian)
    if int(info) == 0:
        factor, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(factor), upper=True)
    if int(info) != 0:
        raise ValueError("the damped Hessian is not positive definite; raise sparsegpt.damp")
    return factor


def sparsegpt(weight: torch.Tensor, gram: torch.Tensor, tokens: int, sparsity: float, n_m: tuple[int, int] | None,
              block_size: int = 128, damp: float = 0.01, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', keep)``: SparseGPT's pruned and compensated weights (float32, pruned entries exactly
    0) and keep mask (bool), for ``weight`` ``[rows, cols]`` and ``gram = X X^T`` over ``tokens``
    calibration tokens. ``n_m``: N:M (``block_size`` a multiple of M); ``keep``: a mask already
    in force (its zeros stay pruned and count towards the target)."""
    w = weight.to(torch.float32, copy=True)
    rows, cols = w.shape
    hessian, dead = damped_hessian(gram, tokens, damp)
    w[:, dead] = 0
    upper = inverse_cholesky_upper(hessian)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    old = None if keep is None else keep == 0
    for first in range(0, cols, block_size):
        last = min(first + block_size, cols)
        block, u = w[:, first:last].clone(), upper[first:last, first:last]
        diagonal_sq = u.diagonal().square().unsqueeze(0)
        errors = torch.zeros_like(block)
        chosen = pruned[:, first:last]  # a view: filled in place
        if n_m is None:
            count = round(sparsity * last) - round(sparsity * first)
            scores = block.square() / diagonal_sq
            counts = torch.full((rows,), count, device=w.device)
            if old is not None:
                scores = scores.masked_fill(old[:, first:last], float("-inf"))
                counts = torch.maximum(counts, old[:, first:last].sum(dim=1))
            chosen.copy_(lowest_per_row(scores, counts))
        for column in range(last - first):
            if n_m is not None and column % n_m[1] == 0:
                group = slice(column, column + n_m[1])
                scores = block[:, group].square() / diagonal_sq[:, group]
                if old is not None:
                    scores = scores.masked_fill(old[:, first:last][:, group], float("-inf"))
                chosen[:, group] = lowest_in_groups(scores, *n_m)
            value = block[:, column]
            error = value * chosen[:, column] / u[column, column]
            block[:, column:].sub_(error.unsqueeze(1) * u[column, column:].unsqueeze(0))
            errors[:, column] = error
        block.masked_fill_(chosen, 0.0)
        w[:, first:last] = block
        w[:, last:].sub_(errors @ upper[first:last, last:])
    return w, ~pruned


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor) -> float:
    """``||W X - W' X||^2 = tr((W - W') X X^T (W - W')^T)`` from ``gram = X X^T``."""
    delta = (weight - pruned).double()
    return float(((delta @ gram.double()) * delta).sum())
