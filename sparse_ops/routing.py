"""BiFormer's routing, one definition for every path: region pooling, affinity, top-k selection, routing tables.

Regions of an ``H x W`` map for ``n_win``: ``n_win`` bands of ``ry = ceil(H / n_win)`` rows by ``n_win`` bands of
``rx = ceil(W / n_win)`` columns; region ``i * n_win + j`` covers rows ``[i*ry, min((i+1)*ry, H))`` and columns
``[j*rx, min((j+1)*rx, W))`` (R = n_win**2 regions; with ragged maps the last bands may be short or empty).

Routing, detached (no gradient):

1. pooling, :func:`region_means`: mean of q and of k over each region's real tokens with all heads concatenated
   head-major, ``(B, R, heads*D)``, accumulated in fp32 (fp64 inputs: fp64); an empty region's mean is 0;
2. affinity, :func:`affinity`: ``q_mean @ k_mean^T`` ``(B, R, R)`` in fp32 with autocast disabled (bf16 / fp16
   would round near-ties into exact ties, tests/sparse_ops/test_routing_regression.py), every score the same
   channel sum (identical regions score bit-identically); empty key regions -inf;
3. selection, :func:`select_regions` -- THE tie rule: the ``topk`` key regions of a query region are the first
   ``topk`` of its key regions ordered by affinity, highest first, and among equal affinities by region index,
   lowest first. A NaN affinity ranks above every number (as ``torch.topk`` ranks it). Empty key regions (-inf)
   are picked only when ``topk`` exceeds the number of non-empty regions, lowest index first. The indices come out
   in that order, so every path returns the same tensor, not only the same set.
   What a NaN region mean does to the attention (a NaN in k routes every query region to it, so every output row
   is NaN; a NaN in q only its own row): docs/design.md, "NaN and inf".

This is the official BiFormer rule as it runs on the GPU: ``ops/bra_legacy.py`` (``TopkRouting``) takes
``torch.topk(attn_logit, k=topk, dim=-1)`` of the detached region-mean affinity, and PyTorch's CUDA top-k
(radix select, ``aten/src/ATen/native/cuda/TensorTopK.cu``) writes every value above the k-th one and then the
values equal to it in index order (the same sets as :func:`select_regions`, NaN rows included, seen with torch
2.11 on an H200 for rows of 9 to 4096 integer-valued scores). ``torch.topk`` on the CPU picks among ties in no
fixed order, so the twin does not call it: :func:`select_regions` is a stable descending sort. (The official
code multiplies the query means by ``qk_dim ** -0.5`` before the product; a positive factor does not reorder
distinct fp32 products except through rounding, which this code does not reproduce.)

Entry points: :func:`route_regions` (q, k ``(B, heads, H, W, D)``: the twin and the unfused Triton op) and
:func:`route_qkv` (a fused ``qkv (B, H, W, 3C)``: the packed Triton op and the fused BiFormer block), which runs
``routing_triton.route_topk_triton`` (region means, affinity, the same top-k rule and the kernels' bit rows in two
launches) -- the Triton twin of :func:`route_regions`, checked against it with ties in
tests/sparse_ops/test_routing.py.

Routing tables: :func:`routing_layout` (static, cached: tokens sorted by region, block-region overlaps) and
:func:`routing_pattern` (the run-time block tables of the routed regions, built on the device with no host sync,
by ``routing_tables.routed_tables`` from the bit rows in one Triton launch on CUDA / the interpreter).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ._host import cdiv
from .backend import why_not_triton
from .patterns import MASK_ROUTE, BlockPattern, _block_rows, _dev, _n_blocks, route_bits, tables_from_state

__all__ = ['region_size', 'nonempty_bands', 'clamp_routing', 'region_means', 'affinity', 'select_regions',
           'route_regions', 'route_qkv', 'RoutingLayout', 'routing_layout', 'routed_state', 'routing_pattern']


def region_size(h: int, w: int, n_win: int) -> tuple[int, int]:
    """``(ry, rx)``: rows and columns of a region of an ``(H, W)`` map cut into ``n_win`` x ``n_win`` bands,
    ``(ceil(H / n_win), ceil(W / n_win))``; the last bands may be shorter or empty. Every routing path uses it."""
    return cdiv(h, n_win), cdiv(w, n_win)


def nonempty_bands(h: int, w: int, n_win: int) -> tuple[int, int]:
    """``(rows, cols)``: the row and column bands of :func:`region_size` that hold real tokens; the non-empty
    regions are the ``rows x cols`` at the top left, ranked row-major (the kernels' group ids)."""
    rh, rw = region_size(h, w, n_win)
    return cdiv(h, rh), cdiv(w, rw)


def clamp_routing(n_win: int, topk: int, h: int, w: int) -> tuple[int, int]:
    """``(n_win, topk)`` for an ``(H, W)`` map: the smallest ``n_win`` with the same row / column bands
    (``ceil(H/n_win)`` rows, ``ceil(W/n_win)`` columns; bands past the input are empty) and ``topk`` capped at the
    number of non-empty regions (beyond it, top-k only adds empty ones). The same partition and routes, with memory
    and time that follow the tokens, not ``n_win``; every routing path (twin, Triton op, fused block) applies it."""
    rows, cols = nonempty_bands(h, w, n_win)
    return max(rows, cols), min(topk, rows * cols)


def region_means(x: torch.Tensor, n_win: int, layout: Optional['RoutingLayout'] = None) -> torch.Tensor:
    """``x (B, H, W, *C)`` (any strides, no copy) -> ``(B, R, prod(C))`` means over each region's real tokens, in
    fp32 (fp64 for fp64 x); 0 for an empty region. ``layout`` (optional): the map's :class:`RoutingLayout`,
    whose cached divisor saves two small kernels."""
    b, hh, ww = x.shape[:3]
    rh, rw = region_size(hh, ww, n_win)
    dtype = torch.promote_types(x.dtype, torch.float32)
    pad_h, pad_w = n_win * rh - hh, n_win * rw - ww
    if pad_h or pad_w:                                  # zero padding adds nothing to the sums
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad_w, 0, pad_h))
    sums = x.reshape(b, n_win, rh, n_win, rw, *x.shape[3:]).sum(dim=(2, 4), dtype=dtype).reshape(b, n_win ** 2, -1)
    if layout is not None and dtype == torch.float32:
        return sums / layout.cnt
    bands = torch.arange(n_win, device=sums.device, dtype=dtype)         # built on the device: no copy, no sync
    rows, cols = (hh - bands * rh).clamp(0, rh), (ww - bands * rw).clamp(0, rw)
    return sums / (rows[:, None] * cols[None, :]).reshape(-1, 1).clamp(min=1)


def _empty_regions(h: int, w: int, n_win: int, device) -> Optional[torch.Tensor]:
    """``(R,)`` bool on ``device``, True where a region has no real token, or None when none is empty."""
    rows, cols = nonempty_bands(h, w, n_win)
    if (rows, cols) == (n_win, n_win):
        return None
    bands = torch.arange(n_win, device=device)
    return (~((bands < rows)[:, None] & (bands < cols)[None, :])).reshape(-1)


_AFFINITY_CHUNK = 1 << 22      # elements of one (B, rows, R, C) product block: 16 MiB in fp32


@torch.no_grad()
def affinity(q_mean: torch.Tensor, k_mean: torch.Tensor, empty: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Region affinity ``q_mean @ k_mean^T``: ``(B, R, C)`` x2 -> ``(B, R, R)`` in the means' dtype (fp32 at least:
    autocast disabled); key regions with ``empty (R,)`` True get -inf.

    Every score is the same reduction over C (elementwise products summed along the channel axis), so identical
    key regions get bit-identical scores and the tie rule sees the tie; a BLAS matmul does not promise that (MKL's
    AVX-512 sgemm sums the last column of a 9-column product in another order). Query rows go in chunks so the
    ``(B, rows, R, C)`` products stay within ``_AFFINITY_CHUNK`` elements."""
    rows = max(1, _AFFINITY_CHUNK // max(1, k_mean.numel()))
    with torch.autocast(q_mean.device.type, enabled=False):
        a = torch.cat([(q[:, :, None, :] * k_mean[:, None, :, :]).sum(-1) for q in q_mean.split(rows, dim=1)],
                      dim=1)
    return a if empty is None else a.masked_fill(empty, float('-inf'))


@torch.no_grad()
def select_regions(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """The tie rule (module docstring): ``scores (..., R)`` -> int64 ``(..., topk)``, the first ``topk`` indices by
    score, highest first, equal scores lowest index first, NaN first."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :topk]


@torch.no_grad()
def route_regions(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int,
                  layout: Optional['RoutingLayout'] = None) -> torch.Tensor:
    """Routed key regions of every query region: q, k ``(B, heads, H, W, D)`` -> int64 ``(B, R, topk)`` (row-major
    region ids, in the order of :func:`select_regions`). ``layout`` (optional) saves recomputing the divisors."""
    h, w = q.shape[2], q.shape[3]

    def means(x):  # (B, heads, H, W, D) -> (B, R, heads*D): the view (B, H, W, heads, D) concatenates head-major
        return region_means(x.permute(0, 2, 3, 1, 4), n_win, layout)
    empty = layout.empty if layout is not None else _empty_regions(h, w, n_win, q.device)
    return select_regions(affinity(means(q), means(k), empty), topk)


@torch.no_grad()
def route_qkv(qkv: torch.Tensor, n_win: int, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`route_regions` of a fused ``qkv (B, H, W, 3C)`` (channels ``[q | k | v]``, heads head-major) on the
    Triton path (CUDA, or CPU under ``TRITON_INTERPRET=1``): two launches, no host sync. Returns ``topk_idx (B, R,
    topk)`` int64, equal to ``route_regions`` of the split heads, ``route (B, R, R)`` fp32, its 0/1 scatter, and
    ``bits (B, G, ceil(G / 32))`` int32, the routes among the G non-empty regions as :func:`routing_pattern`'s bit
    rows."""
    from .routing_triton import route_topk_triton       # Triton is imported only on the Triton path
    return route_topk_triton(qkv, n_win, topk)


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingLayout:
    """Regions of an ``h x w`` map for ``n_win``: tokens sorted by region (row-major inside a region).

    ``perm (N,)`` row-major pixel of each sequence position, ``inv_perm (N,)``, ``rows`` = perm as int32,
    ``region (N,)`` int64 region id of each
    sequence position, ``region_rowmajor (N,)`` region id of each pixel, ``counts (R,)`` tokens per region (R =
    n_win**2; empty regions have 0), ``ranked (G,)`` int64 the non-empty regions in sequence order, ``tok (N, 4)``
    int32 = (0, 0, rank of the region in ``ranked``, 0) (so the group ids of a block's tokens are consecutive),
    ``a_q (n_qb, R)`` / ``a_k (n_kb, R)``
    float 0/1 block-overlaps-region, ``n_q (n_qb,)`` / ``n_k (n_kb,)`` regions per block, ``q_grp (n_qb, 2)`` /
    ``k_grp (n_kb, 2)`` int32 the first and last rank of a block's regions and ``q_span`` / ``k_span`` the most
    regions of one block (the Triton table builder's inputs), ``k_real (n_kb,)`` real
    tokens per key block, ``k_full (n_kb,)`` int8 1 where that is ``block_n``, ``max_kv`` static bound; for the
    routing: ``cnt (R, 1)`` float32 counts clamped to >= 1 (the divisor of the region means) and ``empty (R,)``
    bool, or None when no region is empty (the affinity mask is then skipped); ``blocks_are_regions`` True when
    every query block and every key block is exactly one region (``a_q``, ``a_k`` identities: the region-pair
    counts of the blocks are then the routes themselves, no matmul).
    """
    h: int
    w: int
    n_win: int
    block_m: int
    block_n: int
    perm: torch.Tensor
    inv_perm: torch.Tensor
    rows: torch.Tensor
    region: torch.Tensor
    region_rowmajor: torch.Tensor
    counts: torch.Tensor
    ranked: torch.Tensor
    tok: torch.Tensor
    a_q: torch.Tensor
    a_k: torch.Tensor
    n_q: torch.Tensor
    n_k: torch.Tensor
    q_grp: torch.Tensor
    k_grp: torch.Tensor
    q_span: int
    k_span: int
    k_real: torch.Tensor
    k_full: torch.Tensor
    max_kv: int
    cnt: torch.Tensor
    empty: Optional[torch.Tensor]
    blocks_are_regions: bool = False

    @property
    def n_regions(self) -> int:
        return self.n_win * self.n_win


def _overlap(region: torch.Tensor, n: int, b: int, r: int) -> torch.Tensor:
    nb = _n_blocks(n, b)
    a = torch.zeros(nb, r)
    a[torch.arange(n) // b, region] = 1.0
    return a


def _group_ranges(rank: torch.Tensor, b: int) -> torch.Tensor:
    """``(n_blocks, 2)`` int32: the first and last rank of the tokens of each block of ``b`` (ranks ascend)."""
    starts = torch.arange(0, rank.numel(), b)
    ends = (starts + b).clamp(max=rank.numel()) - 1
    return torch.stack([rank[starts], rank[ends]], 1).to(torch.int32).contiguous()


@functools.lru_cache(maxsize=128)
def _routing_layout(h, w, n_win, bm, bn, device):
    n, r = h * w, n_win * n_win
    ry, rx = region_size(h, w, n_win)
    y, x = torch.arange(h)[:, None].expand(h, w), torch.arange(w)[None, :].expand(h, w)
    reg_rm = ((y // ry) * n_win + x // rx).reshape(-1)
    perm = torch.argsort(reg_rm * n + torch.arange(n))               # region-major, row-major inside
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    region = reg_rm[perm]
    counts = torch.bincount(reg_rm, minlength=r)
    rank = torch.cumsum(counts > 0, 0) - 1                              # region -> rank among the non-empty
    grp = rank[region]                                                  # group (rank) of each sequence position
    tok = torch.zeros(n, 4, dtype=torch.int32)
    tok[:, 2] = grp.to(torch.int32)
    a_q, a_k = _overlap(region, n, bm, r), _overlap(region, n, bn, r)
    # static bound on the key blocks a query block can visit: regions touched by one query block x topk(<= all)
    # regions' key-block spans -- never more than n_kb
    nonempty = counts[counts > 0]
    span = int(((nonempty + bn - 1) // bn + 1).max())
    per_qblock = int(a_q.sum(1).max())
    max_kv_per_topk = per_qblock * span
    k_real = _block_rows(n, bn, 'cpu')
    q_grp, k_grp = _group_ranges(grp, bm), _group_ranges(grp, bn)
    to = functools.partial(torch.Tensor.to, device=device)
    return RoutingLayout(h, w, n_win, bm, bn, to(perm), to(inv), to(perm.to(torch.int32)), to(region), to(reg_rm),
                         to(counts), to(torch.nonzero(counts > 0)[:, 0]),
                         to(tok), to(a_q), to(a_k), to(a_q.sum(1)), to(a_k.sum(1)), to(q_grp), to(k_grp),
                         int((q_grp[:, 1] - q_grp[:, 0]).max()) + 1, int((k_grp[:, 1] - k_grp[:, 0]).max()) + 1,
                         to(k_real),
                         to((k_real == bn).to(torch.int8)), max_kv_per_topk,
                         to(counts.clamp(min=1).to(torch.float32)[:, None]),
                         to(counts == 0) if bool((counts == 0).any()) else None,
                         _is_identity(a_q) and _is_identity(a_k))


def _is_identity(a: torch.Tensor) -> bool:
    return a.shape[0] == a.shape[1] and torch.equal(a, torch.eye(a.shape[0]))


@torch.compiler.assume_constant_result
def routing_layout(h: int, w: int, n_win: int, block_m: int, block_n: int, device=None) -> RoutingLayout:
    """Static region layout for bi-level routing (cached per size, n_win, blocks, device; a constant of the graph
    under ``torch.compile``, as the static patterns are: ``sparse_ops.patterns``)."""
    return _routing_layout(int(h), int(w), int(n_win), int(block_m), int(block_n), _dev(device))


def routed_state(layout: RoutingLayout, pairs: torch.Tensor) -> torch.Tensor:
    """Block state (B, n_qb, n_kb) int8 from the routed region-pair counts ``pairs`` (0 skip / 1 partial / 2 full:
    every (query region, key region) pair of the block is routed and the key block is complete)."""
    need = layout.n_q[:, None] * layout.n_k[None, :]
    full = (pairs >= need - 0.5) & (layout.k_full != 0)[None, None, :]
    return (pairs > 0.5).to(torch.int8) + full.to(torch.int8)


def routing_pattern(layout: RoutingLayout, topk_idx: torch.Tensor, route: Optional[torch.Tensor] = None,
                    bits: Optional[torch.Tensor] = None) -> BlockPattern:
    """Run-time tables for routed regions, built on topk_idx's device with no host sync.

    ``topk_idx (B, R, topk)`` int64: the regions each query region routes to; ``route (B, R, R)`` float32 0/1, the
    scatter of topk_idx, and ``bits``, its bit rows among the non-empty regions, when the caller has them already
    (:func:`route_qkv`). Returns a BlockPattern with Bt = B, ``MASK_ROUTE``, ``route`` the routes among the
    non-empty regions as bit rows (:func:`sparse_ops.patterns.route_bits`, ``(B, G, ceil(G / 32))`` int32, G =
    ``len(layout.ranked)``) and ``n_groups`` = G.
    """
    b, r, topk = topk_idx.shape
    n, bm, bn = layout.h * layout.w, layout.block_m, layout.block_n
    n_qb, n_kb = layout.q_grp.shape[0], layout.k_grp.shape[0]
    max_kv = min(n_kb, layout.max_kv * topk)
    kernel = why_not_triton(topk_idx, 'routing_tables') is None
    if route is None and (bits is None or not kernel):
        route = torch.zeros(b, r, r, device=topk_idx.device, dtype=torch.float32)
        route.scatter_(2, topk_idx, 1.0)
    if bits is None:
        sub = route
        if layout.empty is not None:    # the groups of the kernels' masks: the non-empty regions, in rank order
            sub = route.index_select(1, layout.ranked).index_select(2, layout.ranked)
        bits = route_bits(sub)
    if kernel:      # one launch from the bit rows instead of ~30 small ops
        from .routing_tables import routed_tables
        tables = routed_tables(bits, layout.q_grp, layout.k_grp, layout.k_full, max_kv, n_qb, layout.q_span,
                               layout.k_span)
    else:   # the twin: allowed (query region, key region) pairs per (query block, key block)
        pairs = route if layout.blocks_are_regions else layout.a_q @ route @ layout.a_k.t()   # (B, n_qb, n_kb)
        tables = tables_from_state(routed_state(layout, pairs), max_kv=max_kv, max_q=n_qb)
    return BlockPattern(n, bm, bn, MASK_ROUTE, *tables, tok=layout.tok, route=bits,
                        n_groups=layout.ranked.numel(), perm=layout.perm, inv_perm=layout.inv_perm, rows=layout.rows)
