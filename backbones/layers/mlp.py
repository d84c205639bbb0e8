"""Transformer MLP: ``fc1 -> act -> drop -> fc2 -> drop`` on the last dimension (timm/Swin/NAT parameter names)."""
from __future__ import annotations

import torch
from torch import nn

from .linear import Linear

__all__ = ['Mlp']


class Mlp(nn.Module):
    """Two-layer MLP acting on the last dimension: ``(..., in_features) -> (..., out_features)``.

    Parameter names ``fc1.*`` / ``fc2.*`` match the official Swin, Hilbert (HWT/HNT) and NAT checkpoints.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop.p == 0:           # the backbones' setting: skip two no-op module calls (host time per block)
            return self.fc2(self.act(self.fc1(x)))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
