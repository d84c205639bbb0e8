"""Twin of :func:`sparse_ops.depthwise_conv2d`: a depthwise 2D convolution on a channels-last map, in fp32.

Contract (the Triton op ``sparse_ops/dwconv_triton.py`` computes the same):

- x ``(B, H, W, C)`` fp16 / bf16 / fp32 with ``x.stride(-1) == 1``; the other strides are arbitrary (a channel
  slice ``qkv[..., 2C:]`` of a contiguous ``(B, H, W, 3C)`` projection is read in place).
- weight ``(C, 1, k, k)`` with odd k; stride 1, zero padding ``k // 2`` (output size = input size), groups = C:
  ``y[b, h, w, c] = sum_{i, j < k} weight[c, 0, i, j] * x[b, h + i - k // 2, w + j - k // 2, c]``
  (a cross-correlation, as ``F.conv2d``; x is zero outside the map).
- bias ``(C,)`` or None, added to y; residual ``(B, H, W, C)`` or None (last dim contiguous), added to y.
- Everything in fp32: ``y = conv(x.float(), weight.float()) + bias.float() + residual.float()``, then cast to
  ``out_dtype``, default ``residual.dtype`` when a residual is given, else ``x.dtype``.
- Returns a contiguous ``(B, H, W, C)`` tensor; differentiable in x, weight, bias and residual (each gradient in
  its input's dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ['depthwise_conv2d_nhwc']


def depthwise_conv2d_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Depthwise conv of x ``(B, H, W, C)`` with weight ``(C, 1, k, k)`` (odd k, 'same' zero padding), plus
    bias ``(C,)`` and residual ``(B, H, W, C)`` when given; fp32 math; returns ``(B, H, W, C)`` in ``out_dtype``."""
    if out_dtype is None:
        out_dtype = residual.dtype if residual is not None else x.dtype
    k = weight.shape[-1]
    with torch.autocast(x.device.type, enabled=False):
        y = F.conv2d(x.float().permute(0, 3, 1, 2), weight.float(), None if bias is None else bias.float(),
                     padding=k // 2, groups=x.shape[-1]).permute(0, 2, 3, 1)
        if residual is not None:
            y = y + residual.float()
    return y.to(out_dtype).contiguous()
