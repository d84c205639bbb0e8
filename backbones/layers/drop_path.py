"""Residual branch with stochastic depth, fused: ``x + drop_path(gamma * y)`` in one ``addcmul``.

mmcv's ``DropPath`` costs five kernels per branch in training (rand, add, floor, div, mul) plus the residual add
and, with layer scale, a multiply; at feature-map sizes these launches, not the arithmetic, are the cost of a
backbone step. Here a per-sample 0/1 keep mask ``(B, 1, ..., 1)`` (one tiny kernel) meets ``y``, the optional layer
scale ``gamma (C,)`` and the ``1 / keep_prob`` rescale (addcmul's scalar ``value``) in a single
``torch.addcmul(x, y, mask, value=1 / keep_prob)``. Same distribution
as mmcv / timm: each sample's branch is dropped with probability ``drop_prob`` and kept ones are scaled by
``1 / (1 - drop_prob)``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ['ResidualDropPath']


class ResidualDropPath(nn.Module):
    """``forward(x, y, gamma=None) -> x + drop_path(y)`` or ``x + drop_path(gamma * y)``.

    x, y: ``(B, ..., C)`` of the same shape (x is the residual stream; the result has the promoted dtype of x and
    y, fp32 under autocast). ``gamma``: ``(C,)`` layer scale or None. Dropping happens only in training mode with
    ``drop_prob > 0``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(drop_prob) < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob!r}')
        self.drop_prob = float(drop_prob)

    def factor(self, y: torch.Tensor, gamma: torch.Tensor | None = None) -> tuple[torch.Tensor | None, float]:
        """``(s, value)`` with ``x + drop_path(gamma * y) = addcmul(x, y, s, value=value)``; ``s`` None means
        ``x + y``. ``s`` is ``gamma (C,)``, or in training with ``drop_prob > 0`` the per-sample keep mask
        ``(B, 1, ..., 1)`` (times gamma) drawn here, with ``value = 1 / keep_prob``."""
        if not self.training or self.drop_prob == 0.0:
            return gamma, 1.0
        keep = 1.0 - self.drop_prob
        mask = torch.empty((y.shape[0],) + (1,) * (y.ndim - 1), dtype=torch.float32, device=y.device)
        mask.bernoulli_(keep)
        return (mask if gamma is None else mask * gamma), 1.0 / keep

    def forward(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | None = None) -> torch.Tensor:
        s, value = self.factor(y, gamma)
        return x + y if s is None else torch.addcmul(x, y, s, value=value)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
