"""Transformer MLP: ``fc1 -> act -> drop -> fc2 -> drop`` on the last dimension (timm/Swin/NAT parameter names).

Memory: autograd keeps both the hidden pre-activation ``h = fc1(x)`` (for the GELU backward) and ``gelu(h)`` (for
fc2's weight gradient), 2 x ``mlp_ratio`` x C values per token -- the largest saved tensors of a block. On the
fused path (CUDA tensors, ``sparse_ops`` backend not forced to 'torch') :class:`Mlp` saves only ``h`` and
recomputes ``gelu(h)`` in the backward (one elementwise kernel, bit-identical values: the same GELU on the same
input) through saved-tensor hooks on the fc2 call (``_RecomputeInput``). The twin path is the plain module
composition, as the official implementations.
"""
from __future__ import annotations

import torch
from torch import nn

from sparse_ops.backend import requested_backend

from .linear import Linear

__all__ = ['Mlp']


class _RecomputeInput:
    """``saved_tensors_hooks`` for the fc2 call: the saved copy of fc2's input ``a = act(h)`` is replaced by a
    recipe (h is saved by the activation's own backward anyway); the backward recomputes ``act(h)`` when fc2's
    weight gradient needs it. Every other saved tensor passes through. The autograd nodes stay PyTorch's own (no
    Python autograd Function: its per-call host cost showed in host-bound backbone steps)."""

    def __init__(self, act: nn.Module, h: torch.Tensor, a: torch.Tensor) -> None:
        self.act, self.h, self.ptr, self.numel = act, h, a.data_ptr(), a.numel()

    def pack(self, t: torch.Tensor):
        if t.data_ptr() == self.ptr and t.numel() == self.numel and t.dtype == self.h.dtype:
            return (self.act, self.h, t.shape)
        return t

    @staticmethod
    def unpack(saved):
        if isinstance(saved, tuple):
            act, h, shape = saved
            return act(h).reshape(shape)
        return saved


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop.p == 0 and self._recompute(x):
            h = self.fc1(x)
            a = self.act(h)
            hooks = _RecomputeInput(self.act, h, a)
            with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
                return self.fc2(a)
        if self.drop.p == 0:           # the backbones' setting: skip two no-op module calls (host time per block)
            return self.fc2(self.act(self.fc1(x)))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

