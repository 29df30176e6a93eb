"""The int8 grid, in one place: what QAT simulates is exactly what the exported model stores.

Weights: symmetric, per output channel (row of a Linear ``[out, in]`` weight; row of an embedding
table ``[num_embeddings, dim]``), narrow range ``[-127, 127]``, zero point 0,
``scale = max|row| / 127``. Zero maps to code 0 and back to exactly
0.0, so pruned weights (single zeros, N:M groups, whole zero rows) stay exactly zero in int8.

Activations (inputs of a Linear, ``static`` and ``qat``): asymmetric per tensor, ``[0, 255]``, with
an integer zero point so that 0.0 is exactly representable (padding and ReLU zeros stay zero).
"""
from __future__ import annotations

import torch

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
ACT_QMIN, ACT_QMAX = 0, 255
# A row that is all zeros gets this scale: every code is 0 whatever the scale.
_MIN_SCALE = 1e-12


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-row scales (float32, ``[out]``) of a ``[out, in]`` weight; no gradient flows into them."""
    absmax = weight.detach().abs().amax(dim=1).float()
    return (absmax / WEIGHT_QMAX).clamp(min=_MIN_SCALE)


def _fake_quantize_float(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    zero_points = torch.zeros_like(scales, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight.float(), scales, zero_points, 0, WEIGHT_QMIN, WEIGHT_QMAX)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded onto its int8 grid (straight-through gradient, as every QAT does)."""
    return _fake_quantize_float(weight, weight_scales(weight)).to(weight.dtype)


@torch.no_grad()
def weight_codes(weight: torch.Tensor) -> torch.Tensor:
    """The int8 codes the exported model stores for ``weight``: exactly the integers torch's
    fake quantization rounds to, so ``codes * scale`` (float32) is bit for bit the weight QAT
    computes with. (Recomputing ``round(weight / scale)`` would differ by one step where
    ``weight / scale`` lies within float32 rounding of a half step: up to a few per million.)"""
    scales = weight_scales(weight)
    rounded = _fake_quantize_float(weight.detach(), scales)
    # rounded / scale is within 1e-5 of an integer in [-127, 127]: round() recovers it exactly.
    return torch.round(rounded / scales[:, None]).to(torch.int8)


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` tensors for an observed range; the range is widened to include 0."""
    low = low.clamp(max=0.0)
    high = high.clamp(min=0.0)
    scale = ((high - low) / (ACT_QMAX - ACT_QMIN)).clamp(min=_MIN_SCALE)
    zero_point = torch.clamp(torch.round(ACT_QMIN - low / scale), ACT_QMIN, ACT_QMAX).to(torch.int32)
    return scale.reshape(()).float(), zero_point.reshape(())


def fake_quantize_activation(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``x`` rounded onto the uint8 grid of the range ``[low, high]`` (straight-through gradient)."""
    scale, zero_point = activation_qparams(low, high)
    # float32 whatever the autocast dtype: fake quantization is defined on float32 tensors.
    out = torch.fake_quantize_per_tensor_affine(x.float(), scale, zero_point, ACT_QMIN, ACT_QMAX)
    return out.to(x.dtype)
