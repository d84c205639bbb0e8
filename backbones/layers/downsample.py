"""Stride-2 downsamplers on channels-last maps: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)``.

``PatchMerging`` (Swin / HWT): zero-pads odd H/W to even, concatenates the 2x2 neighbours in Swin's order
``[(0,0), (1,0), (0,1), (1,1)]`` (row offset, column offset), LayerNorm over 4C, bias-free Linear 4C -> 2C.
Parameter names ``norm.*`` / ``reduction.weight`` (official Swin / HWT).
``ConvDownsampler`` (NAT / DiNAT / HNT): bias-free conv3x3/s2/p1 C -> 2C, LayerNorm. Parameter names
``reduction.weight`` / ``norm.*`` (official NAT).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear
from .norm import PreNorm

__all__ = ['PatchMerging', 'ConvDownsampler']


class PatchMerging(nn.Module):
    """Swin patch merging: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dims)`` (``out_dims`` default ``2C``)."""

    def __init__(self, dims: int, out_dims: int | None = None) -> None:
        super().__init__()
        self.norm = PreNorm(4 * dims)
        self.reduction = Linear(4 * dims, out_dims or 2 * dims, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        b, h, w, c = x.shape
        # (B, H/2, dy, W/2, dx, C) -> (B, H/2, W/2, dx, dy, C): channel blocks (dy, dx) = (0,0), (1,0), (0,1), (1,1),
        # Swin's torch.cat order, in one copy (the cat of four strided slices costs 4 zero-filled slice grads)
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class ConvDownsampler(nn.Module):
    """NAT downsampler: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dims)`` (``out_dims`` default ``2C``)."""

    def __init__(self, dims: int, out_dims: int | None = None) -> None:
        super().__init__()
        out_dims = out_dims or 2 * dims
        self.reduction = nn.Conv2d(dims, out_dims, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)
