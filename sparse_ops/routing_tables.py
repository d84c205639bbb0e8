"""Routed block tables in one Triton launch per direction (the run-time half of ``patterns.routing_pattern``).

Routing decides per call which key blocks each query block visits, so its tables cannot be cached. Built with
PyTorch ops (block state from the region-pair counts, then a cumsum + scatter compaction per direction) that is
~30 small kernels per attention call, whose launch cost exceeded the attention kernels' own GPU time at backbone
sizes. Here one program per table row reads the row of region-pair counts, classifies each block (skip / partial
/ full), compacts the visited ones in ascending order with a running ``tl.cumsum`` and writes ``num`` and ``idx``
(entries ``col * 2 + partial``, zero past ``num``): the same tables as ``patterns.tables_from_state``.

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

__all__ = ['compact_pairs']

_CHUNK = 256


@triton.jit
def _compact_pairs_kernel(PAIRS, ROW_CNT, COL_CNT, K_FULL, NUM, IDX, s_pb, s_pr, s_pc, s_nb, s_ib, s_ir,
                          R, C, width, K_FULL_ON_ROWS: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    p_row = PAIRS + z * s_pb + row * s_pr
    i_row = IDX + z * s_ib + row * s_ir
    row_cnt = tl.load(ROW_CNT + row)
    if K_FULL_ON_ROWS:
        kf_row = tl.load(K_FULL + row) != 0
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
    tl.store(NUM + z * s_nb + row, count)
    for c0 in range(0, width, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        tl.store(i_row + cols, tl.zeros([CHUNK], tl.int32), mask=(cols >= count) & (cols < width))


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
