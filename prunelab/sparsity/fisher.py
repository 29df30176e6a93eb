"""The second-order algebra of the Optimal BERT Surgeon (oBERT, Kurtic et al. 2022).

An op's weights, flattened so that every pruning unit is contiguous, are cut into blocks of B
coordinates; the Fisher is block-diagonal, ``F = damp * I + (1/m) sum_i g_i g_i^T`` per block over
m gradients; it is accumulated as gradients arrive and inverted once per update (float64 Cholesky). Every function works on
all blocks of an op at once (``[blocks, B, B]``); nothing
loops over blocks or weights. Pure tensor functions: no state, no modules.

For a unit Q (coordinates of one block):
- score (the loss increase OBS predicts for zeroing Q): ``0.5 w_Q^T ([F^-1]_QQ)^-1 w_Q``,
  ``w^2 / (2 [F^-1]_ii)`` for a single weight;
- update of every weight that removes Q optimally: ``dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q``, which
  sets ``w_Q`` to exactly zero and lets the kept weights compensate.
"""
from __future__ import annotations

import torch

BYTES = 8  # the Fisher is accumulated in float64 (its inverse, float32, takes half)


def damped_fisher(blocks: int, block_size: int, damp: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[blocks, B, B]`` copies of ``damp * I``: the Fisher before any gradient."""
    eye = torch.eye(block_size, dtype=torch.float64, device=device) * damp
    return eye.expand(blocks, block_size, block_size).contiguous()


def add_gradients(fisher: torch.Tensor, grads: torch.Tensor, count: int) -> None:
    """Add ``sum_i g_i g_i^T / count`` over k gradients to every block's Fisher, in place:
    one batched ``G G^T`` for k gradients (reading the Fisher once per k gradients, which matters:
    it is far larger than a cache). ``grads``: ``[blocks, B, k]``.

    Why the Fisher and not its inverse: updating ``F^-1`` from ``I / damp`` by Woodbury subtracts
    terms of size 1/damp = 1e7 from each other; in float32 a MiniLM run lost positive definiteness
    after 230 gradients. Sums of outer products only add, and the one inversion per update runs in
    float64. The sums are float64 too: with fewer gradients than B the sum has rank < B, and float32
    rounding of entries of size |g|^2 (1e-7 relative) gave it negative eigenvalues larger than
    damp = 1e-7 (a 64-example MiniLM run failed its Cholesky factorisation).
    """
    g = grads.to(torch.float64)
    fisher.baddbmm_(g, g.transpose(1, 2), alpha=1.0 / count)


def inverse(fisher: torch.Tensor) -> torch.Tensor:
    """``F^-1`` of every block (float32), through a float64 Cholesky factorisation."""
    factor = torch.linalg.cholesky(fisher.to(torch.float64))
    return torch.cholesky_inverse(factor).float()


def unit_scores(inverse: torch.Tensor, weight: torch.Tensor, unit: int) -> torch.Tensor:
    """OBS score of every unit of ``unit`` consecutive coordinates, ``[blocks * B / unit]``.

    ``weight``: ``[blocks, B]`` in the same layout as the inverse; B is a multiple of ``unit``.
    """
    blocks, size = weight.shape
    w = weight.to(torch.float32)
    if unit == 1:
        return w.square().div_(inverse.diagonal(dim1=1, dim2=2)).mul_(0.5).flatten()
    per_block = size // unit
    # The unit x unit blocks on the diagonal of each B x B inverse: [blocks, per_block, unit, unit].
    diagonal = inverse.view(blocks, per_block, unit, per_block, unit).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
    w = w.double().view(blocks, per_block, unit, 1)
    solved = torch.cholesky_solve(w, torch.linalg.cholesky(diagonal.double()))
    return (w * solved).sum(dim=(2, 3)).mul_(0.5).flatten().float()


def obs_update(inverse: torch.Tensor, weight: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """``dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q`` per block, Q = the coordinates flagged in ``pruned``
    (any number per block, none included).

    One B x B system per block instead of a gather of varying size:
    ``(P F^-1 P + I - P) z = P w`` gives ``z_Q = ([F^-1]_QQ)^-1 w_Q`` and ``z = 0`` off Q, so
    ``dw = -F^-1 z``. The system is symmetric positive definite (``[F^-1]_QQ`` is, and the rest is
    the identity), so a Cholesky factorisation solves it.
    """
    p = pruned.to(torch.float64)
    w = weight.to(torch.float64)
    inverse = inverse.double()  # float64: the pruned set's block can be ill-conditioned
    system = inverse * (p.unsqueeze(2) * p.unsqueeze(1))
    system.diagonal(dim1=1, dim2=2).add_(1.0 - p)
    z = torch.cholesky_solve((p * w).unsqueeze(2), torch.linalg.cholesky(system))
    return torch.bmm(inverse, z).squeeze(2).neg_().float()


def inverse_bytes(weights: int, block_size: int) -> int:
    """Memory of the Fisher blocks (or their inverses) for ``weights`` coordinates (the last block
    padded to B)."""
    blocks = -(-weights // block_size)
    return blocks * block_size * block_size * BYTES
