"""Routed block tables in one Triton launch (the run-time half of ``routing.routing_pattern``).

Routing decides per call which key blocks each query block visits, so its tables cannot be cached. Built with
PyTorch ops (block state from the region-pair counts, then a cumsum + scatter compaction per direction) that is
~30 small kernels per attention call, whose launch cost exceeded the attention kernels' own GPU time at backbone
sizes. Here one program per table row reads the row of region-pair counts, classifies each block (skip / partial
/ full), compacts the visited ones in ascending order with a running ``tl.cumsum`` and writes ``num`` and ``idx``
(entries ``col * 2 + partial``, zero past ``num``): the same tables as ``patterns.tables_from_state``.

``routed_tables(pairs, n_q, n_k, k_full, kv_width, q_width)`` builds both directions in one launch (a launch less
of host time per attention call): ``pairs (B, n_qb, n_kb)`` float region-pair counts (any strides), ``n_q
(n_qb,)`` / ``n_k (n_kb,)`` float regions per block, ``k_full (n_kb,)`` int8 1 where the key block has all
``block_n`` tokens. Block ``(r, c)`` is visited when ``pairs > 0.5`` and full when ``pairs >= n_q[r] * n_k[c] -
0.5`` and its key block is full. Returns ``kv_num (B, n_qb)``, ``kv_idx (B, n_qb, kv_width)`` (query-block rows)
and ``q_num (B, n_kb)``, ``q_idx (B, n_kb, q_width)`` (key-block rows, the transposed direction), int32; the
widths must bound the visited blocks of every row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ['routed_tables']

_CHUNK = 256


@triton.jit
def _compact_row(p_row, s_pc, row_cnt, COL_CNT, K_FULL, kf_row, NUM, i_row, C, width,
                 K_FULL_ON_ROWS: tl.constexpr, CHUNK: tl.constexpr):
    """One table row: classify its C columns, write the visited ones compacted to ``i_row``, the count to NUM."""
    count = tl.full([], 0, tl.int32)
    for c0 in range(0, C, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        ok = cols < C
        p = tl.load(p_row + cols * s_pc, mask=ok, other=0.0)
        need = row_cnt * tl.load(COL_CNT + cols, mask=ok, other=1.0)
        if K_FULL_ON_ROWS:
            kf = kf_row
        else:
            kf = tl.load(K_FULL + cols, mask=ok, other=0) != 0
        visit = (p > 0.5) & ok
        full = (p >= need - 0.5) & kf
        enc = cols * 2 + (visit & ~full).to(tl.int32)
        pos = count + tl.cumsum(visit.to(tl.int32), 0) - 1
        tl.store(i_row + pos, enc, mask=visit & (pos < width))
        count += tl.sum(visit.to(tl.int32), 0)
    tl.store(NUM, count)
    for c0 in range(0, width, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        tl.store(i_row + cols, tl.zeros([CHUNK], tl.int32), mask=(cols >= count) & (cols < width))


@triton.jit(do_not_specialize=['s_pb', 's_pr', 's_kvn', 's_kvb', 's_kvr', 's_qn', 's_qb', 's_qr', 'R', 'C',
                               'kv_width', 'q_width'])   # sizes: not specialised (docs/design.md)
def _routed_tables_kernel(PAIRS, N_Q, N_K, K_FULL, KV_NUM, KV_IDX, Q_NUM, Q_IDX, s_pb, s_pr, s_pc,
                          s_kvn, s_kvb, s_kvr, s_qn, s_qb, s_qr, R, C, kv_width, q_width, CHUNK: tl.constexpr):
    """Grid ``(max(R, C), B, 2)``: axis 2 picks the direction (0: query-block rows, 1: key-block rows)."""
    row = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    p_z = PAIRS + z * s_pb
    if tl.program_id(2) == 0:
        if row < R:
            _compact_row(p_z + row * s_pr, s_pc, tl.load(N_Q + row), N_K, K_FULL, False,
                         KV_NUM + z * s_kvn + row, KV_IDX + z * s_kvb + row * s_kvr, C, kv_width, False, CHUNK)
    else:
        if row < C:
            _compact_row(p_z + row * s_pc, s_pr, tl.load(N_K + row), N_Q, K_FULL, tl.load(K_FULL + row) != 0,
                         Q_NUM + z * s_qn + row, Q_IDX + z * s_qb + row * s_qr, R, q_width, True, CHUNK)


def routed_tables(pairs: torch.Tensor, n_q: torch.Tensor, n_k: torch.Tensor, k_full: torch.Tensor, kv_width: int,
                  q_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """See the module docstring. One launch, grid ``(max(n_qb, n_kb), B, 2)``, no host sync."""
    b, r, c = pairs.shape
    kv_width, q_width = max(1, min(int(kv_width), c)), max(1, min(int(q_width), r))
    dev = pairs.device
    kv_num, q_num = torch.empty((b, r), device=dev, dtype=torch.int32), torch.empty((b, c), device=dev,
                                                                                   dtype=torch.int32)
    kv_idx = torch.empty((b, r, kv_width), device=dev, dtype=torch.int32)
    q_idx = torch.empty((b, c, q_width), device=dev, dtype=torch.int32)
    _routed_tables_kernel[(max(r, c), b, 2)](pairs, n_q, n_k, k_full, kv_num, kv_idx, q_num, q_idx, *pairs.stride(),
                                             kv_num.stride(0), kv_idx.stride(0), kv_idx.stride(1), q_num.stride(0),
                                             q_idx.stride(0), q_idx.stride(1), r, c, kv_width, q_width,
                                             CHUNK=_CHUNK, num_warps=4)
    return kv_num, kv_idx, q_num, q_idx
