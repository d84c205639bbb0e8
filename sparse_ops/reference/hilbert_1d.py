"""PyTorch twins of the three 1D patterns on a Hilbert-ordered sequence: windows, band, 1D neighbourhood.

All three are "range" patterns: query i attends to the contiguous key range ``[lo[i], hi[i]]``. The twin
processes queries in blocks of ``block`` consecutive positions; the keys of a block are the contiguous span
``[min lo, max hi]`` over the block, gathered once per block (never an N x N matrix). Logits cost
``N * span`` and the gathered keys ``(N / block) * span * D``.

Layout: q, k, v ``(B, heads, N, D)``, N tokens in Hilbert order (token i is pixel
``hilbert_order(H, W)[i]`` when ``hw=(H, W)`` is given for the relative position bias).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..hilbert import hilbert_coords
from ._common import (ceil_div, check_hw, check_positive_int, check_qkv, check_rpb, default_scale,
                      masked_attention, rpb_lookup)

__all__ = ['hilbert_window_attention', 'hilbert_slide_attention', 'hilbert_neighborhood_attention_1d',
           'window_ranges', 'band_ranges', 'neighborhood_1d_ranges', 'range_attention']


def window_ranges(n: int, window: int, shift: bool = False, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Key range of every query for Hilbert windows: chunks of ``window`` tokens; with ``shift`` the chunk
    boundaries sit at ``window - window//2 + m*window`` (the first chunk holds ``ceil(window/2)`` tokens).
    Returns ``(lo, hi)``, LongTensors ``(n,)``, inclusive."""
    i = torch.arange(n, device=device)
    front = _shift_front(window, shift)
    start = torch.div(i + front, window, rounding_mode='floor') * window - front
    return start.clamp(min=0), (start + window - 1).clamp(max=n - 1)


def band_ranges(n: int, window: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Key range for the band ``|i - j| <= window//2``. Returns ``(lo, hi)`` ``(n,)``, inclusive."""
    i = torch.arange(n, device=device)
    half = window // 2
    return (i - half).clamp(min=0), (i + half).clamp(max=n - 1)


def neighborhood_1d_ranges(n: int, kernel: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Key range for clamped-centre 1D NA: ``min(kernel, n)`` keys starting at ``i - kernel//2`` shifted
    inward at the ends. Returns ``(lo, hi)`` ``(n,)``, inclusive."""
    i = torch.arange(n, device=device)
    size = min(kernel, n)
    lo = (i - kernel // 2).clamp(min=0, max=n - size)
    return lo, lo + size - 1


def _shift_front(window: int, shift: bool) -> int:
    """Number of virtual tokens before token 0 so that (shifted) chunk boundaries are multiples of window: the
    official HWT rolls the sequence by ``+window//2`` before chunking, so ``window//2`` tokens of the last chunk
    sit in front of token 0."""
    return window // 2 if shift else 0


def range_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    scale: float, *, rpb: torch.Tensor | None = None, coords: torch.Tensor | None = None,
                    block: int = 64, front: int = 0) -> torch.Tensor:
    """Attention where query i sees keys ``lo[i] <= j <= hi[i]`` (with ``lo <= i <= hi`` not required).

    q, k, v ``(B, heads, N, D)``; lo, hi ``(N,)`` long on q.device with ``0 <= lo <= hi < N``.
    rpb ``(heads, 2r-1, 2r-1)`` with coords ``(N, 2)`` (y, x) of each token, optional.
    Queries are grouped in blocks of ``block`` positions, the first block starting ``front`` positions
    before token 0 (pick ``front`` to align blocks with windows). Returns ``(B, heads, N, D)``.
    """
    b, heads, n, d = q.shape
    nb = ceil_div(front + n, block)
    total = nb * block
    pos = torch.arange(total, device=q.device) - front          # query position of each padded slot
    pos_c = pos.clamp(0, n - 1)
    q_lo, q_hi = lo[pos_c].view(nb, block), hi[pos_c].view(nb, block)
    span_start = q_lo.min(dim=1).values                            # (nb,)
    span = int((q_hi.max(dim=1).values - span_start).max()) + 1
    key_pos = span_start[:, None] + torch.arange(span, device=q.device)       # (nb, span), may exceed n-1
    allowed = (key_pos[:, None, :] >= q_lo[..., None]) & (key_pos[:, None, :] <= q_hi[..., None])
    key_pos = key_pos.clamp(max=n - 1)

    qp = F.pad(q, (0, 0, front, total - front - n)).reshape(b, heads, nb, block, d)
    kg = k[:, :, key_pos]                                          # (B, heads, nb, span, D)
    vg = v[:, :, key_pos]
    bias = None
    if rpb is not None:
        bias = rpb_lookup(rpb, coords[pos_c].view(nb, block, 1, 2), coords[key_pos].view(nb, 1, span, 2))
    out = masked_attention(qp, kg, vg, allowed, scale, bias)       # (B, heads, nb, block, D)
    return out.reshape(b, heads, total, d)[:, :, front:front + n]


def _prepare(q, k, v, rpb, hw, name):
    check_qkv(q, k, v, 4, name)
    coords = None
    if rpb is not None:
        h, w = check_hw(hw, q.shape[2], name)
        check_rpb(rpb, q.shape[1], None, q, name)
        coords = hilbert_coords(h, w, device=q.device)
    elif hw is not None:
        check_hw(hw, q.shape[2], name)
    return coords


def hilbert_window_attention(q, k, v, window, shift=False, scale=None, *, rpb=None, hw=None, backend=None):
    """Attention inside chunks of ``window`` consecutive tokens (ragged last chunk attends within itself).

    q, k, v ``(B, heads, N, D)`` in Hilbert order. ``shift=True`` moves the chunk boundaries to
    ``window - window//2 + m*window`` (first chunk has ``ceil(window/2)`` tokens). Optional ``rpb (heads, 2r-1, 2r-1)``
    looked up by the clamped 2D offset (key - query) of the tokens' pixels, needs ``hw=(H, W)``, ``H*W == N``.
    ``backend`` is accepted for signature parity and ignored (this is the torch twin). Returns q's shape/dtype.
    """
    name = 'hilbert_window_attention'
    coords = _prepare(q, k, v, rpb, hw, name)
    window = check_positive_int(window, 'window', name)
    n = q.shape[2]
    lo, hi = window_ranges(n, window, bool(shift), device=q.device)
    return range_attention(q, k, v, lo, hi, default_scale(scale, q.shape[-1]), rpb=rpb, coords=coords,
                           block=window, front=_shift_front(window, bool(shift)))


def hilbert_slide_attention(q, k, v, window, scale=None, *, rpb=None, hw=None, backend=None):
    """Band attention on the Hilbert sequence: token i attends to j with ``|i - j| <= window//2``.

    q, k, v ``(B, heads, N, D)``; rpb / hw as in :func:`hilbert_window_attention`. Returns q's shape/dtype.
    """
    name = 'hilbert_slide_attention'
    coords = _prepare(q, k, v, rpb, hw, name)
    window = check_positive_int(window, 'window', name)
    n = q.shape[2]
    lo, hi = band_ranges(n, window, device=q.device)
    return range_attention(q, k, v, lo, hi, default_scale(scale, q.shape[-1]), rpb=rpb, coords=coords,
                           block=max(32, window // 2 + 1))


def hilbert_neighborhood_attention_1d(q, k, v, kernel, scale=None, *, rpb=None, hw=None, backend=None):
    """1D neighbourhood attention with clamped centre: each token attends to exactly ``min(kernel, N)``
    consecutive tokens starting at ``i - kernel//2``, shifted inward at the sequence ends.

    q, k, v ``(B, heads, N, D)``; rpb / hw as in :func:`hilbert_window_attention`. Returns q's shape/dtype.
    """
    name = 'hilbert_neighborhood_attention_1d'
    coords = _prepare(q, k, v, rpb, hw, name)
    kernel = check_positive_int(kernel, 'kernel', name)
    n = q.shape[2]
    lo, hi = neighborhood_1d_ranges(n, kernel, device=q.device)
    return range_attention(q, k, v, lo, hi, default_scale(scale, q.shape[-1]), rpb=rpb, coords=coords,
                           block=max(32, kernel))
