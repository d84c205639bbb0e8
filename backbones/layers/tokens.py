"""Layout helpers: NCHW <-> channels-last <-> token sequences (row-major or Hilbert order).

Layouts used by the backbones:
    NCHW          ``(B, C, H, W)``   what ``forward`` takes and returns
    channels-last ``(B, H, W, C)``   what patch embeds / downsamplers exchange (``PatchEmbed`` ... ``ConvDownsampler``)
    tokens        ``(B, N, C)``      ``N = H*W``, row-major or Hilbert order (token i is pixel
                                     ``sparse_ops.hilbert_order(H, W)[i]`` in row-major numbering)
"""
from __future__ import annotations

import torch

import sparse_ops

__all__ = ['nchw_to_nhwc', 'nhwc_to_nchw', 'to_hilbert', 'from_hilbert']


def nchw_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H, W, C)`` (a view)."""
    return x.permute(0, 2, 3, 1)


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C) -> (B, C, H, W)``, contiguous (what necks expect)."""
    return x.permute(0, 3, 1, 2).contiguous()


class _PermuteTokens(torch.autograd.Function):
    """``x.index_select(1, order)`` whose gradient is ``g.index_select(1, inverse)`` (one gather each way; autograd's
    own backward of index_select zero-fills and scatters with index_add)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inverse, = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


@torch.compiler.assume_constant_result
def _hilbert_orders(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hilbert_order, hilbert_inverse)`` of an ``h x w`` grid (cached). Under ``torch.compile`` a constant of
    the graph instead of traced; a tuple, because Dynamo names a bare constant tensor after the function, and the
    second call at another size would get a symbolic size."""
    return sparse_ops.hilbert_order(h, w, device=device), sparse_ops.hilbert_inverse(h, w, device=device)


def to_hilbert(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Map ``(B, C, H, W)`` (or ``(B, H, W, C)`` with ``channels_last=True``) to tokens ``(B, H*W, C)`` in Hilbert
    order."""
    if x.ndim != 4:
        raise ValueError(f'to_hilbert expects a 4D tensor, got shape {tuple(x.shape)}')
    if channels_last:
        b, h, w, c = x.shape
        flat = x.reshape(b, h * w, c)
    else:
        b, c, h, w = x.shape
        flat = x.flatten(2).transpose(1, 2)
    order, inverse = _hilbert_orders(h, w, x.device)
    return _PermuteTokens.apply(flat, order, inverse)


def from_hilbert(tokens: torch.Tensor, hw: tuple[int, int], channels_last: bool = False) -> torch.Tensor:
    """Inverse of ``to_hilbert``: tokens ``(B, H*W, C)`` in Hilbert order -> ``(B, C, H, W)`` (contiguous) or
    ``(B, H, W, C)`` with ``channels_last=True``."""
    h, w = hw
    if tokens.ndim != 3 or tokens.shape[1] != h * w:
        raise ValueError(f'from_hilbert expects tokens (B, {h * w}, C) for hw={tuple(hw)}, '
                         f'got shape {tuple(tokens.shape)}')
    b, _, c = tokens.shape
    order, inverse = _hilbert_orders(h, w, tokens.device)
    row_major = _PermuteTokens.apply(tokens, inverse, order)
    if channels_last:
        return row_major.reshape(b, h, w, c)
    return row_major.transpose(1, 2).contiguous().view(b, c, h, w)
