"""Routed block tables in one Triton launch (the run-time half of ``routing.routing_pattern``).

Routing decides per call which key blocks each query block visits, so its tables cannot be cached. Built with
PyTorch ops (region-pair counts by two matmuls, block state, then a cumsum + scatter compaction per direction) that
is ~30 small kernels per attention call, whose launch cost exceeded the attention kernels' own GPU time at backbone
sizes. Here one program per table row counts, for each block of the other side, the routed group pairs straight
from the kernels' bit rows, classifies the block (skip / partial / full), compacts the visited ones in ascending
order with a running ``tl.cumsum`` and writes ``num`` and ``idx`` (entries ``col * 2 + partial``, zero past
``num``): the same tables as ``patterns.tables_from_state(routing.routed_state(...))``.

``routed_tables(bits, q_grp, k_grp, k_full, kv_width, q_width, q_span, k_span)`` builds both directions in one
launch: ``bits (B, G, ceil(G / 32))`` int32, bit ``gk % 32`` of word ``gk // 32`` of row ``gq`` set when group
(non-empty region) ``gq`` routes to group ``gk`` (``patterns.route_bits``); ``q_grp (n_qb, 2)`` / ``k_grp (n_kb,
2)`` int32, the first and last group of each query / key block (a block's groups are consecutive: tokens are
sorted by region); ``k_full (n_kb,)`` int8 1 where the key block has all ``block_n`` tokens; ``q_span`` /
``k_span`` the most groups of one query / key block. Block ``(r, c)`` is visited when one of its group pairs is
routed and full when all are and its key block is full. Returns ``kv_num (B, n_qb)``, ``kv_idx (B, n_qb,
kv_width)`` (query-block rows) and ``q_num (B, n_kb)``, ``q_idx (B, n_kb, q_width)`` (key-block rows, the
transposed direction), int32; the widths must bound the visited blocks of every row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ['routed_tables']

_CHUNK = 256


@triton.jit
def _routed_pairs(BITS_Z, s_bg, lo, hi, c_lo, c_hi, ok, c_span, ROW_IS_QUERY: tl.constexpr):
    """[CHUNK] int32: routed (query group, key group) pairs between the row's groups ``lo..hi`` (scalars) and each
    lane's groups ``c_lo..c_hi``; the row's groups are query groups (bit rows) when ``ROW_IS_QUERY``, else key
    groups (bit positions)."""
    cnt = tl.zeros_like(c_lo)
    for g in range(lo, hi + 1):
        for j in range(0, c_span):
            c = c_lo + j
            m = ok & (c <= c_hi)
            if ROW_IS_QUERY:
                word = tl.load(BITS_Z + g * s_bg + (c >> 5), mask=m, other=0)
                cnt += (word >> (c & 31)) & 1
            else:
                word = tl.load(BITS_Z + c * s_bg + (g >> 5), mask=m, other=0)
                cnt += (word >> (g & 31)) & 1
    return cnt


@triton.jit
def _compact_row(BITS_Z, s_bg, GRP_ROW, COL_GRP, c_span, K_FULL, kf_row, NUM, i_row, C, width,
                 ROW_IS_QUERY: tl.constexpr, CHUNK: tl.constexpr):
    """One table row: classify its C columns, write the visited ones compacted to ``i_row``, the count to NUM."""
    lo = tl.load(GRP_ROW)
    hi = tl.load(GRP_ROW + 1)
    count = tl.full([], 0, tl.int32)
    for c0 in range(0, C, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        ok = cols < C
        c_lo = tl.load(COL_GRP + cols * 2, mask=ok, other=0)
        c_hi = tl.load(COL_GRP + cols * 2 + 1, mask=ok, other=-1)
        p = _routed_pairs(BITS_Z, s_bg, lo, hi, c_lo, c_hi, ok, c_span, ROW_IS_QUERY)
        if ROW_IS_QUERY:
            kf = tl.load(K_FULL + cols, mask=ok, other=0) != 0
        else:
            kf = kf_row
        visit = (p > 0) & ok
        full = (p == (hi - lo + 1) * (c_hi - c_lo + 1)) & kf
        enc = cols * 2 + (visit & ~full).to(tl.int32)
        pos = count + tl.cumsum(visit.to(tl.int32), 0) - 1
        tl.store(i_row + pos, enc, mask=visit & (pos < width))
        count += tl.sum(visit.to(tl.int32), 0)
    tl.store(NUM, count)
    for c0 in range(0, width, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        tl.store(i_row + cols, tl.zeros([CHUNK], tl.int32), mask=(cols >= count) & (cols < width))


@triton.jit(do_not_specialize=['s_bb', 's_bg', 's_kvn', 's_kvb', 's_kvr', 's_qn', 's_qb', 's_qr', 'R', 'C',
                               'kv_width', 'q_width', 'q_span', 'k_span'])   # sizes: not specialised (design.md)
def _routed_tables_kernel(BITS, Q_GRP, K_GRP, K_FULL, KV_NUM, KV_IDX, Q_NUM, Q_IDX, s_bb, s_bg,
                          s_kvn, s_kvb, s_kvr, s_qn, s_qb, s_qr, R, C, kv_width, q_width, q_span, k_span,
                          CHUNK: tl.constexpr):
    """Grid ``(max(R, C), B, 2)``: axis 2 picks the direction (0: query-block rows, 1: key-block rows)."""
    row = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    bits_z = BITS + z * s_bb
    if tl.program_id(2) == 0:
        if row < R:
            _compact_row(bits_z, s_bg, Q_GRP + row * 2, K_GRP, k_span, K_FULL, False,
                         KV_NUM + z * s_kvn + row, KV_IDX + z * s_kvb + row * s_kvr, C, kv_width, True, CHUNK)
    else:
        if row < C:
            _compact_row(bits_z, s_bg, K_GRP + row * 2, Q_GRP, q_span, K_FULL, tl.load(K_FULL + row) != 0,
                         Q_NUM + z * s_qn + row, Q_IDX + z * s_qb + row * s_qr, R, q_width, False, CHUNK)


def routed_tables(bits: torch.Tensor, q_grp: torch.Tensor, k_grp: torch.Tensor, k_full: torch.Tensor,
                  kv_width: int, q_width: int, q_span: int, k_span: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """See the module docstring. One launch, grid ``(max(n_qb, n_kb), B, 2)``, no host sync."""
    b = bits.shape[0]
    r, c = q_grp.shape[0], k_grp.shape[0]
    kv_width, q_width = max(1, min(int(kv_width), c)), max(1, min(int(q_width), r))
    dev = bits.device
    kv_num, q_num = torch.empty((b, r), device=dev, dtype=torch.int32), torch.empty((b, c), device=dev,
                                                                                   dtype=torch.int32)
    kv_idx = torch.empty((b, r, kv_width), device=dev, dtype=torch.int32)
    q_idx = torch.empty((b, c, q_width), device=dev, dtype=torch.int32)
    assert bits.stride(2) == 1, 'bit rows must be contiguous'
    _routed_tables_kernel[(max(r, c), b, 2)](bits, q_grp, k_grp, k_full, kv_num, kv_idx, q_num, q_idx,
                                             bits.stride(0), bits.stride(1), kv_num.stride(0), kv_idx.stride(0),
                                             kv_idx.stride(1), q_num.stride(0), q_idx.stride(0), q_idx.stride(1),
                                             r, c, kv_width, q_width, q_span, k_span, CHUNK=_CHUNK, num_warps=4)
    return kv_num, kv_idx, q_num, q_idx
