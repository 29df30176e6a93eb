"""The second-order algebra of the Optimal BERT Surgeon (oBERT, Kurtic et al. 2022).

An op's weights, flattened so that every pruning unit is contiguous, are cut into blocks of B
coordinates; the Fisher is block-diagonal, ``F = damp * I + (1/m) sum_i g_i g_i^T`` per block over
m gradients, and is kept as its inverse, updated by Woodbury's identity as gradients arrive (a
rank-k step for k gradients is exactly k rank-1 Sherman-Morrison steps). Every function works on
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

BYTES = 4  # the inverses are float32


def damped_inverse(blocks: int, block_size: int, damp: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[blocks, B, B]`` inverses of ``damp * I``: the Fisher before any gradient."""
    eye = torch.eye(block_size, dtype=torch.float32, device=device) / damp
    return eye.expand(blocks, block_size, block_size).contiguous()


def add_gradients(inverse: torch.Tensor, grads: torch.Tensor, count: int) -> None:
    """Add ``sum_i g_i g_i^T / count`` over k gradients to every block's Fisher, in place on its
    inverse (Woodbury): ``F^-1 <- F^-1 - U (count I + G^T U)^-1 U^T`` with ``U = F^-1 G``.
    ``grads``: ``[blocks, B, k]``. The same as k rank-1 (Sherman-Morrison) steps, but reading the
    inverses once per k gradients instead of once per gradient (they are far larger than a cache).
    """
    g = grads.to(torch.float32)
    projected = torch.bmm(inverse, g)  # U = F^-1 G, [blocks, B, k]
    small = torch.bmm(g.transpose(1, 2), projected)  # G^T F^-1 G, [blocks, k, k]
    small.diagonal(dim1=1, dim2=2).add_(count)
    inverse.baddbmm_(projected, torch.linalg.solve(small, projected.transpose(1, 2)), alpha=-1)


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
    w = w.view(blocks, per_block, unit, 1)
    solved = torch.cholesky_solve(w, torch.linalg.cholesky(diagonal))
    return (w * solved).sum(dim=(2, 3)).mul_(0.5).flatten()


def obs_update(inverse: torch.Tensor, weight: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """``dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q`` per block, Q = the coordinates flagged in ``pruned``
    (any number per block, none included).

    One B x B system per block instead of a gather of varying size:
    ``(P F^-1 P + I - P) z = P w`` gives ``z_Q = ([F^-1]_QQ)^-1 w_Q`` and ``z = 0`` off Q, so
    ``dw = -F^-1 z``. The system is symmetric positive definite (``[F^-1]_QQ`` is, and the rest is
    the identity), so a Cholesky factorisation solves it.
    """
    p = pruned.to(torch.float32)
    w = weight.to(torch.float32)
    system = inverse * (p.unsqueeze(2) * p.unsqueeze(1))
    system.diagonal(dim1=1, dim2=2).add_(1.0 - p)
    z = torch.cholesky_solve((p * w).unsqueeze(2), torch.linalg.cholesky(system))
    return torch.bmm(inverse, z).squeeze(2).neg_()


def inverse_bytes(weights: int, block_size: int) -> int:
    """Memory of the inverses for ``weights`` coordinates (the last block padded to B)."""
    blocks = -(-weights // block_size)
    return blocks * block_size * block_size * BYTES
