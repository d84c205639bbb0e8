"""Twin of :func:`sparse_ops.layer_norm`: ``F.layer_norm`` in fp32, then a cast to ``out_dtype``.

This is exactly what autocast does for a LayerNorm followed by a Linear (fp32 norm, cast on the Linear's input).
x ``(..., C)``; weight, bias ``(C,)`` or None. Returns ``(..., C)`` in ``out_dtype`` (default x's dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ['layer_norm']


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        y = F.layer_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(),
                         None if bias is None else bias.float(), eps)
    return y.to(out_dtype or x.dtype)
