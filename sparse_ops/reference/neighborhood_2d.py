"""PyTorch twin of 2D (dilated) neighbourhood attention, NAT / NATTEN semantics, any H, W >= 1.

Semantics: with dilation d the map splits into d x d interleaved sub-grids (rows ``r, r+d, r+2d, ...``).
Inside its sub-grid a query attends to the ``k x k`` window centred on it, shifted inward at the borders so
it always sees ``k x k`` keys; where a sub-grid side is shorter than k the window covers that whole side.
``rpb (heads, 2k-1, 2k-1)`` is added at ``[h, dy + k - 1, dx + k - 1]``, (dy, dx) = key - query in sub-grid
units.

Algorithm (memory ~ N * (T+k-1)^2 logits, not N * k^2 * D gathered keys): the window is separable, so each
axis gets a plan (query tiles of T sub-grid positions, the contiguous key span covering the tile's windows,
and the per-query allowed range inside the span). A 2D tile of T x T queries attends to its
``span_y x span_x`` key box with the product of the two axis masks.

Layout: q, k, v ``(B, heads, H, W, D)``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ._common import ceil_div, check_na2d_args, default_scale, masked_attention

__all__ = ['neighborhood_attention_2d', 'axis_neighbors']

_TILE = 8


@dataclass
class _AxisPlan:
    q_pos: torch.Tensor    # (R, nt, T) image position of each query slot (clamped; padded slots repeat)
    k_pos: torch.Tensor    # (R, nt, S) image position of each key slot (clamped)
    allowed: torch.Tensor  # (R, nt, T, S) key slot inside the query's window
    rel: torch.Tensor      # (R, nt, T, S) key - query offset in sub-grid units
    res: torch.Tensor      # (L,) residue (sub-grid) of each image position
    tile: torch.Tensor     # (L,) tile index of each image position
    slot: torch.Tensor     # (L,) slot inside the tile of each image position


def axis_neighbors(length: int, kernel: int, dilation: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Window of each position along one axis: ``(lo, size)`` LongTensors ``(length,)``, sub-grid units.

    Position p lies in sub-grid ``p % dilation`` at index ``p // dilation``; its keys are the sub-grid indices
    ``lo[p] .. lo[p] + size[p] - 1`` (image positions ``p % dilation + dilation * index``).
    """
    p = torch.arange(length, device=device)
    res, idx = p % dilation, torch.div(p, dilation, rounding_mode='floor')
    sub_len = torch.div(length - res + dilation - 1, dilation, rounding_mode='floor')
    size = sub_len.clamp(max=kernel)
    lo = torch.minimum((idx - kernel // 2).clamp(min=0), sub_len - size)
    return lo, size


@functools.lru_cache(maxsize=256)
def _axis_plan(length: int, kernel: int, dilation: int, tile: int, device: torch.device) -> _AxisPlan:
    """Tiling of one axis (cached per size, kernel, dilation, device; treat as read-only)."""
    n_res = min(dilation, length)                 # residues that exist (sub-grids may be a single cell)
    max_sub = ceil_div(length, dilation)          # longest sub-grid
    tile = min(tile, max_sub)
    nt = ceil_div(max_sub, tile)
    r = torch.arange(n_res, device=device)[:, None]                               # (R, 1)
    sub_len = torch.div(length - r + dilation - 1, dilation, rounding_mode='floor')  # (R, 1), >= 1
    s = torch.minimum(torch.arange(nt * tile, device=device)[None], sub_len - 1)    # (R, nt*T) clamped
    size = sub_len.clamp(max=kernel)
    lo = torch.minimum((s - kernel // 2).clamp(min=0), sub_len - size).view(n_res, nt, tile)
    hi = lo + size.view(n_res, 1, 1) - 1
    start = lo.min(dim=-1).values                                                 # (R, nt)
    span = int((hi.max(dim=-1).values - start).max()) + 1
    k_sub = start[..., None] + torch.arange(span, device=device)                  # (R, nt, S)
    allowed = (k_sub[:, :, None, :] >= lo[..., None]) & (k_sub[:, :, None, :] <= hi[..., None])
    rel = k_sub[:, :, None, :] - s.view(n_res, nt, tile)[..., None]
    k_sub = torch.minimum(k_sub, sub_len.view(n_res, 1, 1) - 1)
    rr = r.view(n_res, 1, 1)
    p = torch.arange(length, device=device)
    sub = torch.div(p, dilation, rounding_mode='floor')
    return _AxisPlan(q_pos=rr + dilation * s.view(n_res, nt, tile), k_pos=rr + dilation * k_sub,
                     allowed=allowed, rel=rel, res=p % dilation,
                     tile=torch.div(sub, tile, rounding_mode='floor'), slot=sub % tile)


def neighborhood_attention_2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None, backend=None):
    """2D neighbourhood attention (NATTEN semantics, dilation sub-grids, any H, W >= 1).

    q, k, v ``(B, heads, H, W, D)``; ``kernel_size`` odd >= 1; ``dilation`` >= 1;
    ``rpb`` optional ``(heads, 2*kernel_size-1, 2*kernel_size-1)``, receives gradients.
    ``backend`` is accepted for signature parity and ignored (torch twin). Returns q's shape and dtype.
    """
    kernel_size, dilation = check_na2d_args(q, k, v, kernel_size, dilation, rpb, 'neighborhood_attention_2d')
    b, heads, h, w, d = q.shape
    scale = default_scale(scale, d)

    py = _axis_plan(h, kernel_size, dilation, _TILE, q.device)
    px = _axis_plan(w, kernel_size, dilation, _TILE, q.device)
    ry, nty, ty = py.q_pos.shape
    rx, ntx, tx = px.q_pos.shape
    sy, sx = py.k_pos.shape[-1], px.k_pos.shape[-1]

    def tiles(t, rows, cols):  # rows (ry, nty, n), cols (rx, ntx, m) -> (B, heads, ry, rx, nty, ntx, n*m, D)
        g = t[:, :, rows[:, None, :, None, :, None], cols[None, :, None, :, None, :]]
        return g.reshape(b, heads, ry, rx, nty, ntx, rows.shape[-1] * cols.shape[-1], d)

    qt = tiles(q, py.q_pos, px.q_pos)
    kt = tiles(k, py.k_pos, px.k_pos)
    vt = tiles(v, py.k_pos, px.k_pos)
    allowed = (py.allowed[:, None, :, None, :, None, :, None] & px.allowed[None, :, None, :, None, :, None, :])
    allowed = allowed.reshape(ry, rx, nty, ntx, ty * tx, sy * sx)
    bias = None
    if rpb is not None:
        side = 2 * kernel_size - 1
        iy = (py.rel.clamp(-(kernel_size - 1), kernel_size - 1) + kernel_size - 1)
        ix = (px.rel.clamp(-(kernel_size - 1), kernel_size - 1) + kernel_size - 1)
        flat = iy[:, None, :, None, :, None, :, None] * side + ix[None, :, None, :, None, :, None, :]
        bias = rpb.reshape(heads, side * side)[:, flat.reshape(ry, rx, nty, ntx, ty * tx, sy * sx)]
    out = masked_attention(qt, kt, vt, allowed, scale, bias)
    out = out.view(b, heads, ry, rx, nty, ntx, ty, tx, d)
    yi = (py.res[:, None], px.res[None, :], py.tile[:, None], px.tile[None, :], py.slot[:, None], px.slot[None, :])
    return out[:, :, yi[0], yi[1], yi[2], yi[3], yi[4], yi[5]]
