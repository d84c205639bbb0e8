"""``layer_norm``: LayerNorm over the last dimension whose output comes out in a chosen (lower) precision.

A backbone's pre-norms feed Linear layers; under autocast those read bf16 / fp16, so the fp32 norm output that
``F.layer_norm`` returns is cast right away. ``layer_norm(x, weight, bias, eps, out_dtype=torch.bfloat16)``
produces that cast result directly: on CUDA with one Triton kernel each way (``sparse_ops/norm_triton.py``),
elsewhere with the twin ``sparse_ops.reference.norm`` (fp32 ``F.layer_norm`` + cast). Statistics are fp32 on both.

Backend choice as the attention functions: ``backend='torch'`` the twin, ``'triton'`` the kernels (CUDA, or CPU
with ``TRITON_INTERPRET=1``) or a ValueError saying why not, ``None`` the kernels for CUDA tensors and the twin
otherwise; ``sparse_ops.use_backend`` sets the default.
"""
from __future__ import annotations

import torch

from . import backend as _backend
from .kernels import norm_triton
from .reference import norm as _twin

__all__ = ['layer_norm']

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _check(x, weight, bias, eps, out_dtype) -> None:
    name = 'sparse_ops.layer_norm'
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS or x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f'{name}: x must be a float16/bfloat16/float32 tensor (..., C) with C >= 1, got '
                         f'{getattr(x, "dtype", type(x).__name__)} of shape {tuple(getattr(x, "shape", ()))}')
    for what, p in (('weight', weight), ('bias', bias)):
        if p is not None and (not isinstance(p, torch.Tensor) or tuple(p.shape) != (x.shape[-1],)):
            raise ValueError(f'{name}: {what} must be ({x.shape[-1]},) like x.shape[-1], got '
                             f'{tuple(getattr(p, "shape", ())) or type(p).__name__}')
        if p is not None and p.device != x.device:
            raise ValueError(f'{name}: {what} is on {p.device}, x on {x.device}')
    if not float(eps) > 0:
        raise ValueError(f'{name}: eps must be > 0, got {eps!r}')
    if out_dtype is not None and out_dtype not in _FLOATS:
        raise ValueError(f'{name}: out_dtype must be one of {_FLOATS}, got {out_dtype!r}')


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, out_dtype: torch.dtype | None = None, backend: str | None = None) -> torch.Tensor:
    """LayerNorm of x ``(..., C)`` over C with optional ``weight`` / ``bias`` ``(C,)``; fp32 statistics; returns
    ``(..., C)`` in ``out_dtype`` (default x's dtype). Differentiable in x, weight and bias."""
    _check(x, weight, bias, eps, out_dtype)
    chosen = _backend.choose_kernel(backend, 'layer_norm', x)
    if chosen == 'triton':
        return norm_triton.layer_norm_triton(x, weight, bias, eps, out_dtype)
    return _twin.layer_norm(x, weight, bias, eps, out_dtype)
