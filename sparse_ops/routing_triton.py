"""BiFormer's routing step in two Triton launches: the Triton twin of ``sparse_ops.routing.route_regions`` (its
pooling, affinity and tie rule, on the heads of a fused qkv) plus the ``scatter_`` of ``routing.routing_pattern``
and the kernels' bit rows of the routes (``patterns.route_bits``).
Called through ``routing.route_qkv``.

The PyTorch routing is ~15 small ops (pad, region sums, division, matmul, mask, top-k, scatter), whose host time
exceeds their device time at backbone sizes (docs/benchmarks.md at 167f716, session 8). Here:

1. ``_region_means_kernel``, grid ``(B * R, cdiv(2C, BLOCK_C))``: one program per (batch, region, channel chunk)
   walks the region's real tokens in chunks of ``BLOCK_T`` (strided loads straight from ``qkv``, no padded copy),
   accumulates in fp32 and divides by the region's token count (from the region geometry, clamped to >= 1), writing
   ``means (B, R, 2C)`` fp32: q means in ``[..., :C]``, k means in ``[..., C:]``.
2. ``_route_kernel``, grid ``(B * R,)``: one program per query region computes its ``R`` affinities
   ``q_mean . k_mean`` in fp32 (elementwise products summed over channel chunks, no ``tl.dot``, so no tf32 / bf16
   rounding), sets empty key regions to -inf, picks the top-``topk`` by ``topk`` rounds of max-and-mask and writes
   the indices, the 0/1 route row and, for a non-empty query region, its row of route bits over the non-empty
   key regions (the kernels' mask, ``patterns.route_bits``).

Regions: ``n_win`` bands of ``ry = ceil(H / n_win)`` rows by ``n_win`` bands of ``rx = ceil(W / n_win)`` columns;
region ``i * n_win + j`` covers rows ``[i*ry, min((i+1)*ry, H))`` and columns ``[j*rx, min((j+1)*rx, W))``, so with
ragged maps the last bands may be short or empty (``R = n_win**2``).

Top-k selection: the rule of ``routing.select_regions`` (highest affinity first, equal affinities lowest region
index first, NaN above every number, empty key regions -inf: picked only when ``topk`` exceeds the number of
non-empty regions), in that order, by ``topk`` rounds of max-and-mask; every index is in ``[0, R)`` and distinct
within a row. A NaN is ranked as +inf, so it ties with a real +inf (an fp32 overflow of the affinity), where the
twin's sort puts the NaN first.

Public: :func:`route_topk_triton` (indices and route matrix) and :func:`region_means_triton` (kernel 1 alone).
CPU tensors need ``TRITON_INTERPRET=1``; fp16 / bf16 / fp32 inputs (no ``tl.dot``, so bf16 also runs in the
interpreter).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._host import cdiv, next_pow2
from .routing import nonempty_bands, region_size

__all__ = ['route_topk_triton', 'region_means_triton']

_BLOCK_T = 16             # tokens per chunk of the region-means kernel
_BLOCK_C_MEANS = 64       # channels per program of the region-means kernel
_ROUTE_TILE = 4096        # elements of the (key regions x channels) tile of the route kernel
_MAX_REGIONS = 16384      # n_win <= 128: all R scores of a query region live in one program's registers


@triton.jit
def _band(i, size, extent):
    """Number of real rows (or columns) in band ``i`` of ``size`` rows of a map of ``extent`` rows (0 if empty)."""
    return tl.minimum(tl.maximum(extent - i * size, 0), size)


@triton.jit(do_not_specialize=['H', 'W', 'RY', 'RX'])   # sizes: not specialised (docs/design.md)
def _region_means_kernel(QKV, MEANS, s_b, s_h, s_w, s_c, s_mb, s_mr, H, W, RY, RX, N_WIN, C2,
                         BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid ``(B * R, cdiv(2C, BLOCK_C))``: ``MEANS[b, r, chunk]`` = fp32 mean of ``QKV[b, y, x, chunk]`` over the
    region's real tokens (0 for an empty region). ``QKV (B, H, W, >= 2C)`` any strides, ``MEANS (B, R, 2C)``."""
    pid = tl.program_id(0)
    n_regions = N_WIN * N_WIN
    b, r = pid // n_regions, pid % n_regions
    y0, x0 = (r // N_WIN) * RY, (r % N_WIN) * RX
    nx = _band(r % N_WIN, RX, W)
    n_tok = _band(r // N_WIN, RY, H) * nx
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = chans < C2
    p_c = QKV + b.to(tl.int64) * s_b + chans.to(tl.int64)[None, :] * s_c          # (1, BLOCK_C)
    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for t0 in range(0, n_tok, BLOCK_T):         # no iteration for an empty region (nx may then be 0)
        t = t0 + tl.arange(0, BLOCK_T)
        y, x = y0 + t // nx, x0 + t % nx
        p_t = y.to(tl.int64)[:, None] * s_h + x.to(tl.int64)[:, None] * s_w      # (BLOCK_T, 1)
        acc += tl.load(p_c + p_t, mask=(t < n_tok)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / tl.maximum(n_tok, 1).to(tl.float32)
    tl.store(MEANS + b.to(tl.int64) * s_mb + r.to(tl.int64) * s_mr + chans, mean, mask=c_ok)


@triton.jit
def _affinity_row(q_row, k_rows, k_ok, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """``(BLOCK_R,)`` fp32 dot products of the query mean at ``q_row`` (C floats) with the key means at ``k_rows``
    (``(BLOCK_R, 1)`` pointers, C floats each; lanes with ``k_ok`` False give 0)."""
    score = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_ok = cs < C
        q = tl.load(q_row + cs, mask=c_ok, other=0.0)
        k = tl.load(k_rows + cs[None, :], mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        score += tl.sum(k * q[None, :], axis=1)
    return score


@triton.jit
def _bit_row(BITS_ROW, keys, sel, N_WIN, COLS, WORDS, WORD_BLOCK: tl.constexpr):
    """Write the ``WORDS`` int32 words of one bit row: bit ``g % 32`` of word ``g // 32`` is set for the rank
    ``g = (key // N_WIN) * COLS + key % N_WIN`` of every lane with ``sel`` (distinct ranks: the sums are ORs)."""
    rank = (keys // N_WIN) * COLS + keys % N_WIN
    bit = tl.where(sel, 1 << (rank & 31), 0)
    word = tl.where(sel, rank >> 5, -1)
    for w0 in range(0, WORDS, WORD_BLOCK):
        ws = w0 + tl.arange(0, WORD_BLOCK)
        val = tl.sum(tl.where(word[None, :] == ws[:, None], bit[None, :], 0), axis=1)
        tl.store(BITS_ROW + ws, val, mask=ws < WORDS)


@triton.jit(do_not_specialize=['H', 'W', 'RY', 'RX', 'TOPK', 's_ib', 's_ir', 's_rb', 's_rr', 's_bb', 's_br', 'COLS',
                               'WORDS'])
def _route_kernel(MEANS, IDX, ROUTE, BITS, s_mb, s_mr, s_ib, s_ir, s_rb, s_rr, s_bb, s_br, H, W, RY, RX, N_WIN, C,
                  TOPK, COLS, WORDS, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, WORD_BLOCK: tl.constexpr):
    """Grid ``(B * R,)``: affinities of query region r of batch b against all R key regions, top-``TOPK`` into
    ``IDX[b, r, :]`` (int64), the 0/1 row ``ROUTE[b, r, :]`` (fp32) and, for a non-empty r, its bit row over the
    non-empty key regions ``BITS[b, rank(r), :]`` (``COLS`` non-empty column bands, ``WORDS`` int32 words per row).
    ``MEANS (B, R, 2C)`` from kernel 1."""
    pid = tl.program_id(0)
    n_regions = N_WIN * N_WIN
    b, r = (pid // n_regions).to(tl.int64), (pid % n_regions).to(tl.int64)
    keys = tl.arange(0, BLOCK_R)
    k_ok = keys < n_regions
    m_b = MEANS + b * s_mb
    score = _affinity_row(m_b + r * s_mr, m_b + C + keys.to(tl.int64)[:, None] * s_mr, k_ok, C, BLOCK_R, BLOCK_C)
    score = tl.where(score != score, float('inf'), score)                 # NaN ranks first, as in torch.topk
    empty = (_band(keys // N_WIN, RY, H) == 0) | (_band(keys % N_WIN, RX, W) == 0)
    score = tl.where(empty, float('-inf'), score)
    avail = k_ok                                                            # not padding, not picked yet
    i_row = IDX + b * s_ib + r * s_ir
    for t in range(0, TOPK):                    # TOPK <= R: some lane is always available
        best = tl.max(tl.where(avail, score, float('-inf')), axis=0)
        pick = tl.min(tl.where(avail & (score == best), keys, BLOCK_R), axis=0)   # lowest index among ties
        tl.store(i_row + t, pick.to(tl.int64))
        avail = avail & (keys != pick)
    picked = k_ok & ~avail
    tl.store(ROUTE + b * s_rb + r * s_rr + keys, picked.to(tl.float32), mask=k_ok)
    qi, qj = r // N_WIN, r % N_WIN
    if (_band(qi, RY, H) > 0) & (_band(qj, RX, W) > 0):     # rows of the non-empty query regions only
        _bit_row(BITS + b * s_bb + (qi * COLS + qj) * s_br, keys, picked & ~empty, N_WIN, COLS, WORDS, WORD_BLOCK)


@functools.lru_cache(maxsize=256)
def _plan(h: int, w: int, n_win: int, c: int) -> tuple:
    """Launch constants for a ``(*, h, w, 3c)`` map: ``(ry, rx, R, means grid axis 1, route BLOCK_R, route BLOCK_C,
    route num_warps, non-empty row bands, non-empty column bands, words per bit row, WORD_BLOCK)``."""
    r = n_win * n_win
    ry, rx = region_size(h, w, n_win)
    rows, cols = nonempty_bands(h, w, n_win)
    words = cdiv(rows * cols, 32)
    block_r = next_pow2(r)
    block_c = max(1, min(next_pow2(c), _ROUTE_TILE // block_r))
    word_block = max(1, min(next_pow2(words), _ROUTE_TILE // block_r))
    return (ry, rx, r, cdiv(2 * c, _BLOCK_C_MEANS), block_r, block_c, 4 if block_r <= 1024 else 8, rows, cols, words,
            word_block)


def _check(qkv: torch.Tensor, n_win, topk=None) -> None:
    """ValueError naming the problem (host-side integer checks only, no device work)."""
    name = 'route_topk_triton' if topk is not None else 'region_means_triton'
    if qkv.dim() != 4 or qkv.shape[-1] % 3 or 0 in qkv.shape:
        raise ValueError(f'{name}: qkv must be (B, H, W, 3C) with every size >= 1, got shape {tuple(qkv.shape)}')
    if not isinstance(n_win, int) or not 1 <= n_win * n_win <= _MAX_REGIONS:
        raise ValueError(f'{name}: n_win must be an int in [1, {int(_MAX_REGIONS ** 0.5)}], got {n_win=}')
    if topk is not None and (not isinstance(topk, int) or not 1 <= topk <= n_win * n_win):
        raise ValueError(f'{name}: topk must be an int in [1, n_win**2={n_win * n_win}], got {topk=}')


def _launch_means(qkv: torch.Tensor, n_win: int, plan: tuple) -> torch.Tensor:
    """Kernel 1: ``qkv (B, H, W, 3C)`` -> ``means (B, R, 2C)`` fp32 (one allocation, one launch)."""
    b, h, w, c3 = qkv.shape
    ry, rx, r, n_chunks = plan[:4]
    means = torch.empty((b, r, 2 * (c3 // 3)), device=qkv.device, dtype=torch.float32)
    _region_means_kernel[(b * r, n_chunks)](qkv, means, *qkv.stride(), means.stride(0), means.stride(1), h, w, ry,
                                            rx, n_win, means.shape[2], BLOCK_T=_BLOCK_T, BLOCK_C=_BLOCK_C_MEANS,
                                            num_warps=4)
    return means


def region_means_triton(qkv: torch.Tensor, n_win: int) -> torch.Tensor:
    """fp32 region means of q and k: ``qkv (B, H, W, 3C)`` (any strides, channels ``[q | k | v]``) -> ``(B, R, 2C)``
    with the q means in ``[..., :C]`` and the k means in ``[..., C:]``; an empty region's mean is 0.
    Equals ``routing.region_means(qkv[..., :2C], n_win)`` up to fp32 summation order."""
    _check(qkv, n_win)
    return _launch_means(qkv, n_win, _plan(qkv.shape[1], qkv.shape[2], n_win, qkv.shape[3] // 3))


def route_topk_triton(qkv: torch.Tensor, n_win: int, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BiFormer routing of ``qkv (B, H, W, 3C)`` (any strides, channels ``[q | k | v]``, C = heads * head_dim).

    Returns ``topk_idx (B, R, topk)`` int64, the key regions each query region routes to (in the
    order of ``routing.select_regions``); ``route (B, R, R)`` fp32, 1 at ``[b, r, topk_idx[b, r, :]]`` and
    0 elsewhere (what ``routing.routing_pattern`` builds with ``scatter_``); and ``bits (B, G, ceil(G / 32))``
    int32, the routes among the G non-empty regions (in region order) as the kernels' bit rows: equal to
    ``patterns.route_bits`` of ``route`` restricted to those regions. Host work: four ``torch.empty`` and two
    launches, no sync.
    """
    _check(qkv, n_win, topk)
    b, h, w, c3 = qkv.shape
    plan = _plan(h, w, n_win, c3 // 3)
    ry, rx, r, _, block_r, block_c, warps, rows, cols, words, word_block = plan
    means = _launch_means(qkv, n_win, plan)
    idx = torch.empty((b, r, topk), device=qkv.device, dtype=torch.int64)
    route = torch.empty((b, r, r), device=qkv.device, dtype=torch.float32)
    bits = torch.empty((b, rows * cols, words), device=qkv.device, dtype=torch.int32)
    _route_kernel[(b * r,)](means, idx, route, bits, means.stride(0), means.stride(1), idx.stride(0), idx.stride(1),
                            route.stride(0), route.stride(1), bits.stride(0), bits.stride(1), h, w, ry, rx, n_win,
                            c3 // 3, topk, cols, words, BLOCK_R=block_r, BLOCK_C=block_c, WORD_BLOCK=word_block,
                            num_warps=warps)
    return idx, route, bits
