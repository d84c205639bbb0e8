"""Generalized Hilbert curve ("gilbert2d") orders for any H x W grid.

The curve follows Jakub Červený's recursive generalized Hilbert construction: the longer side is split in
two (when the rectangle is much wider than tall) or the rectangle is cut into three pieces (a bottom strip,
a middle block traversed along the major axis and a return strip), with halves rounded so that every piece
can be entered and left on adjacent cells. It works for any ``h, w >= 1`` without padding to a power of
two. Consecutive cells are 4-neighbours, except for at most one diagonal step, which only happens when the
long side is odd and the short side even. For power-of-two squares the curve is the classic Hilbert curve,
so every run of ``4**k`` consecutive cells (starting at a multiple of ``4**k``) is an aligned
``2**k x 2**k`` square.

Implementation: the walk of a sub-rectangle does not depend on its position, so each distinct sub-rectangle
shape is built once as a tensor of row-major offsets and reused shifted (a few dozen shapes per grid);
results are cached per ``(h, w)`` on CPU and per device.

Layout: a grid cell ``(y, x)`` has row-major index ``y * w + x``. The curve starts at ``(0, 0)``.

Public helpers (all cached; the returned tensors are shared, treat them as read-only):

- ``hilbert_order(h, w, device=None) -> LongTensor (h*w,)``: row-major index of the i-th cell along the curve.
- ``hilbert_inverse(h, w, device=None) -> LongTensor (h*w,)``: curve position of each row-major cell.
- ``hilbert_coords(h, w, device=None) -> LongTensor (h*w, 2)``: ``(y, x)`` of the i-th cell along the curve.
"""
from __future__ import annotations

import functools

import torch

__all__ = ['hilbert_order', 'hilbert_inverse', 'hilbert_coords', 'gilbert_points']


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _walk(memo: dict, width: int, ax: int, ay: int, bx: int, by: int) -> torch.Tensor:
    """Row-major offsets (relative to the entry cell, ``dy * width + dx``) of the cells of the rectangle spanned
    by the major axis vector (ax, ay) and the minor axis vector (bx, by), in curve order: entering at the
    origin, leaving at the corner along the major axis. The walk does not depend on where the rectangle sits,
    so every shape is built once (``memo``) and its pieces are shifted copies."""
    key = (ax, ay, bx, by)
    if key in memo:
        return memo[key]
    length = abs(ax + ay)   # cells along the major axis (one of ax, ay is zero)
    breadth = abs(bx + by)  # cells along the minor axis
    dax, day = _sign(ax), _sign(ay)
    dbx, dby = _sign(bx), _sign(by)

    def at(dx: int, dy: int) -> int:
        return dy * width + dx

    if breadth == 1 or length == 1:  # a single line: an arithmetic run of offsets
        step = at(dax, day) if breadth == 1 else at(dbx, dby)
        out = torch.arange(max(length, breadth), dtype=torch.long) * step
    else:
        # half vectors, rounded towards -inf like the original construction
        hax, hay = ax // 2, ay // 2
        hbx, hby = bx // 2, by // 2
        if 2 * length > 3 * breadth:
            # long rectangle: two halves along the major axis; keep the first half even so it can turn
            if abs(hax + hay) % 2 and length > 2:
                hax, hay = hax + dax, hay + day
            out = torch.cat([_walk(memo, width, hax, hay, bx, by),
                             _walk(memo, width, ax - hax, ay - hay, bx, by) + at(hax, hay)])
        else:
            # three pieces: up the minor axis, across along the major axis, back down to the far corner
            if abs(hbx + hby) % 2 and breadth > 2:
                hbx, hby = hbx + dbx, hby + dby
            out = torch.cat([_walk(memo, width, hbx, hby, hax, hay),
                             _walk(memo, width, ax, ay, bx - hbx, by - hby) + at(hbx, hby),
                             _walk(memo, width, -hbx, -hby, -(ax - hax), -(ay - hay))
                             + at((ax - dax) + (hbx - dbx), (ay - day) + (hby - dby))])
    memo[key] = out
    return out


def gilbert_points(h: int, w: int) -> list[tuple[int, int]]:
    """Return the ``(y, x)`` cells of the generalized Hilbert curve over an ``h x w`` grid, in curve order."""
    return [divmod(i, w) for i in _row_major_order(h, w).tolist()]


def _row_major_order(h: int, w: int) -> torch.Tensor:
    _check_size(h, w)
    if w >= h:
        return _walk({}, w, w, 0, 0, h)
    return _walk({}, w, 0, h, w, 0)


_CACHE_SIZES = 512
"""Grid sizes each cache keeps (least recently used out): multi-scale training meets many sizes, and an unbounded
cache would grow with every new one."""


def _check_size(h, w) -> None:
    for name, v in (('h', h), ('w', w)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f'hilbert grid size must be an int, got {name}={v!r}')
        if v < 1:
            raise ValueError(f'hilbert grid size must be >= 1, got {name}={v}')


@functools.lru_cache(maxsize=_CACHE_SIZES)
def _order_cpu(h: int, w: int) -> torch.Tensor:
    return _row_major_order(h, w)


@functools.lru_cache(maxsize=_CACHE_SIZES)
def _inverse_cpu(h: int, w: int) -> torch.Tensor:
    order = _order_cpu(h, w)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(h * w, dtype=torch.long)
    return inv


@functools.lru_cache(maxsize=_CACHE_SIZES)
def _coords_cpu(h: int, w: int) -> torch.Tensor:
    order = _order_cpu(h, w)
    return torch.stack([order // w, order % w], dim=1)


_BUILDERS = {'order': _order_cpu, 'inverse': _inverse_cpu, 'coords': _coords_cpu}


@functools.lru_cache(maxsize=3 * _CACHE_SIZES)
def _cached_on(kind: str, h: int, w: int, device: torch.device) -> torch.Tensor:
    return _BUILDERS[kind](h, w).to(device)


def _get(kind: str, h: int, w: int, device) -> torch.Tensor:
    h, w = _as_int(h), _as_int(w)
    _check_size(h, w)
    if device is None:
        return _BUILDERS[kind](h, w)
    device = torch.device(device)
    if device.type == 'cpu':
        return _BUILDERS[kind](h, w)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return _cached_on(kind, h, w, device)


def _as_int(v):
    # accept 0-dim integer tensors / numpy ints (shapes under tracing) but keep python ints in the cache key
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
        return int(v)
    if hasattr(v, '__index__') and not isinstance(v, (bool, int)):
        return int(v.__index__())
    return v


def hilbert_order(h: int, w: int, device=None) -> torch.Tensor:
    """Generalized Hilbert order of an ``h x w`` grid.

    Returns a LongTensor ``order`` of shape ``(h*w,)``, a permutation of ``range(h*w)``: ``order[i]`` is the
    row-major index (``y * w + x``) of the i-th cell along the curve; ``order[0] == 0``. To put a row-major
    token sequence ``x: (..., h*w, C)`` in Hilbert order use ``x[..., order, :]``. Cached per ``(h, w)`` and
    device; do not modify the result in place.
    """
    return _get('order', h, w, device)


def hilbert_inverse(h: int, w: int, device=None) -> torch.Tensor:
    """Inverse permutation of :func:`hilbert_order`: LongTensor ``(h*w,)``, ``inv[order[i]] == i``.

    ``x_hilbert[..., inv, :]`` puts a Hilbert-ordered sequence back in row-major order.
    """
    return _get('inverse', h, w, device)


def hilbert_coords(h: int, w: int, device=None) -> torch.Tensor:
    """``(y, x)`` grid coordinates of each curve position: LongTensor ``(h*w, 2)``, ``[:, 0]`` is y."""
    return _get('coords', h, w, device)
