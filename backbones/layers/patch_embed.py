"""Stems that turn an image ``(B, C_in, H, W)`` into a stride-4 channels-last map ``(B, ceil(H/4), ceil(W/4), C)``.

``PatchEmbed``: Swin's non-overlapping ``p x p`` conv (pads bottom/right with zeros when H or W is not a multiple of
``p``), then LayerNorm. Parameter names ``proj.*`` / ``norm.*`` (official Swin / HWT). The conv is computed as what
it is, a GEMM of the ``C_in*p*p`` patch vectors with the flattened kernel: one copy of the image into patch rows,
and the output comes out channels-last. (cuDNN's kernel for this conv's weight gradient, plus two NCHW <-> NHWC
conversions, cost more than the GEMMs: docs/benchmarks.md at 167f716, session 4.)
``ConvTokenizer``: NAT's two overlapping ``3x3`` stride-2 convs, then LayerNorm. Parameter names ``proj.0.*``,
``proj.1.*``, ``norm.*`` (official NAT / DiNAT / HNT).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['PatchEmbed', 'ConvTokenizer']


class PatchEmbed(nn.Module):
    """``(B, C_in, H, W) -> (B, ceil(H/p), ceil(W/p), embed_dims)`` with a ``p x p`` stride-``p`` conv and LayerNorm
    (``norm=False`` drops the norm)."""

    def __init__(self, in_channels: int = 3, embed_dims: int = 96, patch_size: int = 4, norm: bool = True) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got {patch_size}')
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_h, pad_w = (-x.shape[2]) % p, (-x.shape[3]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        b, c, h, w = x.shape
        low = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        if low is not None and x.is_floating_point():
            x = x.to(low)                                    # cast before the copy into patch rows (half the bytes)
        # (B, C, H/p, p, W/p, p) -> (B, H/p, W/p, C, p, p): patch vectors in the kernel's (C, kh, kw) order
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h // p, w // p, c * p * p)
        x = F.linear(patches, self.proj.weight.view(self.proj.out_channels, -1), self.proj.bias)
        return self.norm(x) if self.norm is not None else x


class ConvTokenizer(nn.Module):
    """``(B, C_in, H, W) -> (B, ceil(H/4), ceil(W/4), embed_dims)``: conv3x3/s2 (to ``embed_dims // 2``),
    conv3x3/s2, LayerNorm (``norm=False`` drops it)."""

    def __init__(self, in_channels: int = 3, embed_dims: int = 64, norm: bool = True) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, embed_dims // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dims // 2, embed_dims, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dims) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x
