"""Routed block tables in one Triton launch (the run-time half of ``patterns.routing_pattern``).

Routing decides per call which key blocks each query block visits, so its tables cannot be cached. Built with
PyTorch ops (block state from the region-pair counts, then a cumsum + scatter compaction per direction) that is
~30 small kernels per attention call, whose launch cost exceeded the attention kernels' own GPU time at backbone
sizes. Here one program per table row reads the row of region-pair counts, classifies each block (skip / partial
/ full), compacts the visited ones in ascending order with a running ``tl.cumsum`` and writes ``num`` and ``idx``
(entries ``col * 2 + partial``, zero past ``num``): the same tables as ``patterns.tables_from_state``.

``routed_tables(pairs, n_q, n_k, k_full, kv_width, q_width)`` builds both directions (kv and q tables) in one
launch, which is what ``patterns.routing_pattern`` calls (a launch is ~50 us of host time per attention call).
``compact_pairs(pairs, row_cnt, col_cnt, k_full, k_full_on_rows, width)``: ``pairs (B, R, C)`` float (any strides;
pass a transposed view for the query-major direction), ``row_cnt (R,)`` / ``col_cnt (C,)`` float regions per block,
``k_full (R or C,)`` int8 1 where the key block has all ``block_n`` tokens. Block ``(r, c)`` is visited when
``pairs > 0.5`` and full when ``pairs >= row_cnt * col_cnt - 0.5`` and its key block is full. Returns
``num (B, R)`` int32 and ``idx (B, R, width)`` int32; ``width`` must bound the visited blocks of every row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ['compact_pairs', 'routed_tables']

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


@triton.jit
def _compact_pairs_kernel(PAIRS, ROW_CNT, COL_CNT, K_FULL, NUM, IDX, s_pb, s_pr, s_pc, s_nb, s_ib, s_ir,
                          R, C, width, K_FULL_ON_ROWS: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    kf_row = False
    if K_FULL_ON_ROWS:
        kf_row = tl.load(K_FULL + row) != 0
    _compact_row(PAIRS + z * s_pb + row * s_pr, s_pc, tl.load(ROW_CNT + row), COL_CNT, K_FULL, kf_row,
                 NUM + z * s_nb + row, IDX + z * s_ib + row * s_ir, C, width, K_FULL_ON_ROWS, CHUNK)


@triton.jit
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


def compact_pairs(pairs: torch.Tensor, row_cnt: torch.Tensor, col_cnt: torch.Tensor, k_full: torch.Tensor,
                  k_full_on_rows: bool, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """See the module docstring. One launch, grid ``(R, B)``, no host sync."""
    b, r, c = pairs.shape
    width = max(1, min(int(width), c))
    num = torch.empty((b, r), device=pairs.device, dtype=torch.int32)
    idx = torch.empty((b, r, width), device=pairs.device, dtype=torch.int32)
    _compact_pairs_kernel[(r, b)](pairs, row_cnt, col_cnt, k_full, num, idx, *pairs.stride(), num.stride(0),
                                  idx.stride(0), idx.stride(1), r, c, width, K_FULL_ON_ROWS=k_full_on_rows,
                                  CHUNK=_CHUNK, num_warps=4)
    return num, idx


def routed_tables(pairs: torch.Tensor, n_q: torch.Tensor, n_k: torch.Tensor, k_full: torch.Tensor, kv_width: int,
                  q_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both directions in one launch: ``compact_pairs(pairs, n_q, n_k, k_full, False, kv_width)`` and
    ``compact_pairs(pairs.transpose(1, 2), n_k, n_q, k_full, True, q_width)``. ``pairs (B, n_qb, n_kb)``, ``n_q
    (n_qb,)`` / ``n_k (n_kb,)`` regions per block, ``k_full (n_kb,)``. Returns kv_num, kv_idx, q_num, q_idx."""
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
