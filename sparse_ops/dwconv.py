"""``depthwise_conv2d``: depthwise 2D convolution on a channels-last map, with a fused residual add.

BiFormer's blocks run a 3x3 position embedding ``x + dwconv3x3(x)`` on the residual stream and a 5x5 "LCE" on V
(a channel slice ``qkv[..., 2C:]`` of the fused projection). ``depthwise_conv2d(x, weight, bias, residual)`` reads
x ``(B, H, W, C)`` in place (channel stride 1, any pixel strides) and returns ``conv(x) + bias + residual``
``(B, H, W, C)``: on CUDA with one Triton kernel each way (``sparse_ops/dwconv_triton.py``), elsewhere with the
twin ``sparse_ops.reference.dwconv`` (fp32 ``F.conv2d`` on an NCHW view). The contract (padding, dtypes) is stated
in the twin's docstring.

Backend choice as the attention functions: ``backend='torch'`` the twin, ``'triton'`` the kernels (CUDA, or CPU
with ``TRITON_INTERPRET=1``) or a ValueError saying why not, ``None`` the kernels for CUDA tensors and the twin
otherwise; ``sparse_ops.use_backend`` sets the default.
"""
from __future__ import annotations

import torch

from . import backend as _backend
from .kernels import dwconv_triton
from .reference import dwconv as _twin

__all__ = ['depthwise_conv2d']

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_NAME = 'sparse_ops.depthwise_conv2d'


def _shape(t) -> tuple:
    return tuple(getattr(t, 'shape', ()))


def _check(x, weight, bias, residual, out_dtype) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS or x.dim() != 4:
        raise ValueError(f'{_NAME}: x must be a float16/bfloat16/float32 tensor (B, H, W, C), got '
                         f'{getattr(x, "dtype", type(x).__name__)} of shape {_shape(x)}')
    bsz, h, w, c = x.shape
    if min(h, w, c) < 1:
        raise ValueError(f'{_NAME}: x must have H, W, C >= 1, got shape {_shape(x)}')
    if x.stride(-1) != 1:
        raise ValueError(f'{_NAME}: x must have a contiguous channel dim (x.stride(-1) == 1), got strides '
                         f'{x.stride()}')
    if not isinstance(weight, torch.Tensor) or weight.dtype not in _FLOATS:
        raise ValueError(f'{_NAME}: weight must be a float16/bfloat16/float32 tensor ({c}, 1, k, k), got '
                         f'{getattr(weight, "dtype", type(weight).__name__)}')
    k = weight.shape[-1] if weight.dim() == 4 else -1
    if weight.dim() != 4 or tuple(weight.shape) != (c, 1, k, k):
        raise ValueError(f'{_NAME}: weight must be (C, 1, k, k) = ({c}, 1, k, k) with C = x.shape[-1], got shape '
                         f'{_shape(weight)}')
    if k % 2 != 1:
        raise ValueError(f'{_NAME}: kernel size k must be odd (same-size output with padding k // 2), got {k=}')
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dtype not in _FLOATS
                             or tuple(bias.shape) != (c,)):
        raise ValueError(f'{_NAME}: bias must be a float tensor ({c},) like x.shape[-1], got '
                         f'{getattr(bias, "dtype", type(bias).__name__)} of shape {_shape(bias)}')
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.dtype not in _FLOATS:
            raise ValueError(f'{_NAME}: residual must be a float16/bfloat16/float32 tensor, got '
                             f'{getattr(residual, "dtype", type(residual).__name__)}')
        if residual.shape != x.shape:
            raise ValueError(f'{_NAME}: residual must have x\'s shape {_shape(x)}, got {_shape(residual)}')
        if residual.stride(-1) != 1:
            raise ValueError(f'{_NAME}: residual must have a contiguous channel dim (stride(-1) == 1), got '
                             f'strides {residual.stride()}')
    for what, t in (('weight', weight), ('bias', bias), ('residual', residual)):
        if t is not None and t.device != x.device:
            raise ValueError(f'{_NAME}: {what} is on {t.device}, x on {x.device}')
    if out_dtype is not None and out_dtype not in _FLOATS:
        raise ValueError(f'{_NAME}: out_dtype must be one of {_FLOATS}, got {out_dtype!r}')


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, *, out_dtype: torch.dtype | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """Depthwise conv (stride 1, zero padding ``k // 2``, groups = C) of x ``(B, H, W, C)`` (channel stride 1,
    any other strides) with weight ``(C, 1, k, k)``, odd k, plus bias ``(C,)`` and residual ``(B, H, W, C)`` when
    given; fp32 math. Returns a contiguous ``(B, H, W, C)`` tensor in ``out_dtype`` (default residual's dtype when
    a residual is given, else x's). Differentiable in x, weight, bias and residual."""
    _check(x, weight, bias, residual, out_dtype)
    chosen = _backend.choose_kernel(backend, 'depthwise_conv2d', x, residual=residual)
    if chosen == 'triton':
        return dwconv_triton.depthwise_conv2d_nhwc(x, weight, bias, residual, out_dtype)
    return _twin.depthwise_conv2d_nhwc(x, weight, bias, residual, out_dtype)
