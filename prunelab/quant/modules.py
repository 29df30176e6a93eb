"""``FakeQuantLinear``: an ``nn.Linear`` that computes with int8-rounded weights (and inputs);
``FakeQuantEmbedding``: an ``nn.Embedding`` that looks up rows of its int8-rounded table.

A Linear becomes one *in place*: its class is swapped (as ``torch.nn.utils.parametrize`` does) and
three buffers are added. The module object, its name, its ``weight``/``bias`` Parameter objects and
any hooks stay the same, so everything that holds them keeps working whatever the order of
set-up: the pruning engine (it selects ``nn.Linear`` and subclasses, masks ``module.weight`` in
place), the optimizer, checkpoints, accelerate. ``restore_linear`` swaps back. An embedding
table becomes a ``FakeQuantEmbedding`` the same way, with no buffer at all (weights only: its
input is a token id); ``restore_embedding`` swaps back.

For export (``freeze_int8``, on the copy that is converted, never on a model being trained) the
int8 codes and per-row scales become buffers and forward computes ``codes * scales`` from them:
OpenVINO's converter keeps an int8 buffer as an int8 constant (-> Convert -> Multiply), so the
graph stores exactly torch's codes and dequantizes to exactly the fake-quantized weights.

Activation ranges are observed in one of three ways (``observer``):
``"ema"`` (QAT: moving average of batch min/max while ``training``), ``"minmax"`` (static
calibration: running min/max over every batch seen, train or eval) and ``"off"`` (frozen).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.quant.grid import fake_quantize_activation, fake_quantize_weight, weight_codes, weight_scales

OBSERVERS = ("ema", "minmax", "off")
_BUFFERS = ("act_low", "act_high", "act_observed")


class FakeQuantLinear(nn.Linear):
    """Created only by ``to_fake_quant`` from an existing ``nn.Linear`` (never constructed)."""

    quantize_inputs: bool
    observer: str
    ema_momentum: float
    _range_known: bool  # mirrors act_observed once True, so forward does not sync a GPU

    def __init__(self, *args, **kwargs):
        raise TypeError("FakeQuantLinear is made from an nn.Linear by prepare_qat() / to_fake_quant(), not constructed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize_inputs:
            self._observe(x)
            if self.has_input_range():
                x = fake_quantize_activation(x, self.act_low, self.act_high)
        return F.linear(x, _rounded_weight(self), self.bias)

    def has_input_range(self) -> bool:
        """Whether an input range was observed (here or in a loaded checkpoint)."""
        if not self._range_known:
            self._range_known = bool(self.act_observed)
        return self._range_known

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        if self.observer == "off" or (self.observer == "ema" and not self.training):
            return
        low, high = x.detach().min().float(), x.detach().max().float()
        if not self.has_input_range():
            self.act_low.copy_(low)
            self.act_high.copy_(high)
            self.act_observed.fill_(True)
            self._range_known = True
        elif self.observer == "minmax":
            self.act_low.copy_(torch.minimum(self.act_low, low))
            self.act_high.copy_(torch.maximum(self.act_high, high))
        else:
            self.act_low.add_(self.ema_momentum * (low - self.act_low))
            self.act_high.add_(self.ema_momentum * (high - self.act_high))

    def extra_repr(self) -> str:
        inputs = f"inputs=uint8/{self.observer}" if self.quantize_inputs else "inputs=float"
        return f"{super().extra_repr()}, weight=int8/per-channel, {inputs}"


def to_fake_quant(linear: nn.Linear, *, quantize_inputs: bool, observer: str, ema_momentum: float = 0.01) -> FakeQuantLinear:
    """Turn ``linear`` (exactly ``nn.Linear``) into a ``FakeQuantLinear`` in place and return it."""
    if type(linear) is not nn.Linear:
        raise TypeError(f"only nn.Linear modules become FakeQuantLinear, got {type(linear).__name__}")
    if observer not in OBSERVERS:
        raise ValueError(f"observer={observer!r}: expected one of {', '.join(OBSERVERS)}")
    device = linear.weight.device
    linear.__class__ = FakeQuantLinear
    linear.quantize_inputs = quantize_inputs
    linear.observer = observer
    linear.ema_momentum = ema_momentum
    linear._range_known = False
    linear.register_buffer("act_low", torch.zeros((), device=device))
    linear.register_buffer("act_high", torch.zeros((), device=device))
    linear.register_buffer("act_observed", torch.zeros((), dtype=torch.bool, device=device))
    return linear


def restore_linear(module: FakeQuantLinear) -> nn.Linear:
    """Undo ``to_fake_quant`` in place: a plain ``nn.Linear`` with the same Parameters."""
    for name in _BUFFERS:
        delattr(module, name)
    for name in ("quantize_inputs", "observer", "ema_momentum", "_range_known"):
        module.__dict__.pop(name, None)
    module.__class__ = nn.Linear
    return module


class FakeQuantEmbedding(nn.Embedding):
    """Created only by ``to_fake_quant_embedding`` from an existing ``nn.Embedding``.

    The table is rounded per row (one scale per token / position) onto the int8 weight grid, then
    rows are looked up: exactly what the exported graph computes (int8 table -> float32 ->
    times the row scales -> Gather). Gradients pass straight through the rounding."""

    def __init__(self, *args, **kwargs):
        raise TypeError("FakeQuantEmbedding is made from an nn.Embedding by prepare_qat() / quantize(), not constructed")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, _rounded_weight(self), self.padding_idx, None, 2.0, self.scale_grad_by_freq)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight=int8/per-row"


def can_fake_quant_embedding(module: nn.Module) -> bool:
    """A plain ``nn.Embedding`` whose lookup is a pure Gather with a dense gradient: not
    ``max_norm`` (it rewrites the table in place at every lookup, which an int8 table cannot do)
    and not ``sparse`` (the rounded table is a dense tensor, so its gradient would be dense)."""
    return type(module) is nn.Embedding and module.max_norm is None and not module.sparse


def to_fake_quant_embedding(embedding: nn.Embedding) -> FakeQuantEmbedding:
    """Turn ``embedding`` (see ``can_fake_quant_embedding``) into a ``FakeQuantEmbedding`` in
    place and return it."""
    if not can_fake_quant_embedding(embedding):
        raise TypeError(
            f"only nn.Embedding modules without max_norm and sparse become FakeQuantEmbedding, got {embedding!r}"
        )
    embedding.__class__ = FakeQuantEmbedding
    return embedding


def restore_embedding(module: FakeQuantEmbedding) -> nn.Embedding:
    """Undo ``to_fake_quant_embedding`` in place: a plain ``nn.Embedding`` with the same Parameter."""
    module.__class__ = nn.Embedding
    return module


# ------------------------------------------------------------------------------ export
_FROZEN = ("int8_codes", "int8_scales")


def _rounded_weight(module: nn.Module) -> torch.Tensor:
    """The int8-rounded weight: from the frozen codes (export) or fake-quantized (training)."""
    if getattr(module, "_frozen", False):
        weight = module.int8_codes.to(torch.float32) * module.int8_scales
        # A half-precision model computes in its dtype, as fake_quantize_weight returns it.
        return weight if module.weight.dtype == torch.float32 else weight.to(module.weight.dtype)
    return fake_quantize_weight(module.weight)


@torch.no_grad()
def freeze_int8(module: nn.Module) -> None:
    """Store ``module``'s int8 codes and per-row scales as buffers (int8 ``[rows, cols]`` and
    float32 ``[rows, 1]``) and compute from them from now on. For the export copy only: the
    weight no longer trains. ``codes * scales`` equals ``fake_quantize_weight(weight)`` bit for bit."""
    if not isinstance(module, (FakeQuantLinear, FakeQuantEmbedding)):
        raise TypeError(f"only FakeQuantLinear / FakeQuantEmbedding modules are frozen to int8, got {type(module).__name__}")
    weight = module.weight.detach()
    module.register_buffer(_FROZEN[0], weight_codes(weight))
    module.register_buffer(_FROZEN[1], weight_scales(weight)[:, None].contiguous())
    module._frozen = True
