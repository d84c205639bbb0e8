"""Transformer MLP: ``fc1 -> act -> drop -> fc2 -> drop`` on the last dimension (timm/Swin/NAT parameter names).

Memory: autograd keeps both the hidden pre-activation ``h = fc1(x)`` (for the GELU backward) and ``gelu(h)`` (for
fc2's weight gradient), 2 x ``mlp_ratio`` x C values per token -- the largest saved tensors of a block. On the
fused path (CUDA tensors, ``sparse_ops`` backend not forced to 'torch') :class:`Mlp` saves only ``h`` and
recomputes ``gelu(h)`` in the backward (one elementwise kernel, bit-identical values: the same GELU on the same
input), ``_GeluLinear``. The twin path is the plain module composition, as the official implementations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparse_ops.backend import requested_backend

from .linear import Linear

__all__ = ['Mlp']


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` saving ``h`` and ``weight`` only; h ``(..., hidden)`` -> ``(..., out)``.

    All inputs in one dtype (the caller casts); runs with autocast off. Backward: ``da = dout @ weight``,
    ``dh = gelu'(h) * da``, ``dweight = dout^T @ gelu(h)`` (recomputed), ``dbias = sum(dout)``.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, approximate):
        ctx.save_for_backward(h, weight)
        ctx.approximate, ctx.has_bias = approximate, bias is not None
        with torch.autocast(h.device.type, enabled=False):
            return F.linear(F.gelu(h, approximate=approximate), weight, bias)

    @staticmethod
    def backward(ctx, dout):
        h, weight = ctx.saved_tensors
        d2 = dout.reshape(-1, dout.shape[-1])
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            da = (d2 @ weight).view(h.shape)
            dh = torch.ops.aten.gelu_backward(da, h, approximate=ctx.approximate)
        if ctx.needs_input_grad[1]:
            a = F.gelu(h, approximate=ctx.approximate).reshape(-1, h.shape[-1])
            dw = d2.t() @ a
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = d2.sum(0)
        return dh, dw, db, None


class Mlp(nn.Module):
    """Two-layer MLP acting on the last dimension: ``(..., in_features) -> (..., out_features)``.

    Parameter names ``fc1.*`` / ``fc2.*`` match the official Swin, Hilbert (HWT/HNT) and NAT checkpoints.
    ``recompute_act``: recompute GELU in the backward instead of saving its output (module docstring); None =
    on the fused path only (CUDA, gradients on, ``sparse_ops`` backend not forced to 'torch', not compiling).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0, recompute_act: bool | None = None) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)
        self.recompute_act = recompute_act

    def _recompute(self, x: torch.Tensor) -> bool:
        if type(self.act) is not nn.GELU or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return False
        if self.recompute_act is not None:
            return self.recompute_act
        return x.is_cuda and requested_backend(None, 'mlp') != 'torch'

    def _fc2_params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.fc2._low if self.fc2._low is not None else (self.fc2.weight, self.fc2.bias)
        return weight.to(dtype), (bias.to(dtype) if bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop.p == 0 and self._recompute(x):
            h = self.fc1(x)
            return _GeluLinear.apply(h, *self._fc2_params(h.dtype), self.act.approximate)
        if self.drop.p == 0:           # the backbones' setting: skip two no-op module calls (host time per block)
            return self.fc2(self.act(self.fc1(x)))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

