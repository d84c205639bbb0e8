"""Block-sparse flash attention, backward pass (Triton).

Design note
-----------
Two passes (FlashAttention-2 / Triton's fused-attention tutorial use three: a separate preprocess computes
``delta = rowsum(dO * O)`` first; here the dQ pass computes the delta of its own query block, which it needs
anyway, and stores it for the dK/dV pass: one launch less per backward, which at feature-map sizes is host time):

1. dQ: program ``(pid_m, pid_zh)`` owns query block ``pid_m``: ``delta`` of its rows (stored, (B, H, N) fp32),
   then it walks the forward table and accumulates ``dQ += dS K``. When a relative
   position bias is present this pass also scatters ``dS`` into ``drpb`` with fp32 atomics; to cut contention the
   buffer has ``copies`` replicas (picked by ``pid_m % copies``) that the launcher sums. The atomics are
   ``relaxed`` (Triton's default ``acq_rel`` fences every one of them; nothing reads the sums before the kernel
   ends): dQ+bias faster (docs/benchmarks.md at 167f716, session 3). dRPB is therefore deterministic only up to
   fp32 summation order; dQ, dK, dV are bitwise deterministic.
2. dK/dV: program ``(pid_n, pid_zh)`` owns key block ``pid_n``; it walks the *transposed* table (``q_num``,
   ``q_idx``: the query blocks that visit this key block, built by ``patterns.py``), recomputes
   ``P = exp2(S - lse)`` and accumulates ``dV += P^T dO`` and ``dK += dS^T Q`` in registers; no atomics.
3. Split dK/dV (when a key block's list can be much longer than the average: routing, whose ``q_idx`` rows may
   list every query block). Routing concentrates: at BiFormer-S's initialisation every query region of a map routes
   to the same top-k key regions, so one program per key block leaves the few hot key blocks looping over all
   query blocks (1024 iterations against an average of 4 at stage 1, 1024²) while the GPU idles. Here each key
   block's list is cut into chunks of at most ``chunk`` entries, one program per chunk (``_split_tables``: the
   chunk -> key block table in one launch, running counts and a binary search on the device, no host sync, a
   fixed grid ``n_kb + ceil(entries / chunk)``). A key block of one chunk stores its result as before; the chunks
   of a longer one store fp32 partial sums into a scratch buffer, which a third launch adds up in chunk order and
   stores: bitwise deterministic, as the one-program pass.

``dS = P * (dP - delta)`` is the gradient of the natural-log logits ``scale * q.k + bias``: ``dQ = scale * dS K``,
``dK = scale * dS^T Q``, ``dbias = sum dS`` per bias cell. The logits, masks and bias lookup are the forward's
helpers (``_scores``), so the passes agree bit for bit on which pairs exist.

NaN and inf (docs/design.md, "NaN and inf"): a query row whose ``delta`` is not finite (its output is NaN, or dO
holds a NaN) is *poisoned*. The dQ and dK/dV kernels run twice, ``EXACT=False`` (the loops above, where ``0 * NaN``
spreads a poisoned row or a non-finite k / v row over the tile) and then ``EXACT=True`` (own compiled variants).
The first dQ pass stores a flag per program (dq not finite); the first dK/dV pass stores none: a non-finite row that
reaches its tiles also makes NaN the dq of every query block in its list, so the exact dK/dV program reads the dQ
flags of its list's entries (of its chunk, in the split pass). An exact program returns at once when no flag is
set; else it walks its list again: poisoned rows add nothing, non-finite k rows read as 0, dQ writes the poisoned
rows NaN and marks their bias cells with NaN atomics (the first pass added every finite ``dS``), dK/dV writes NaN
into the rows of the keys a poisoned row is allowed (a chunk's partial sums: the reduce, launched after it, keeps
the NaN). Two extra launches per backward, always (no host sync).

Layout and limits: as the forward (``block_sparse_fwd.py``); dq/dk/dv are written in q/k/v's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._host import cdiv
from .block_sparse_fwd import Config, _finite_rows, _k_meta, _q_meta, _rows, _rpb_index, _scores, _table_strides

__all__ = ['block_sparse_bwd', 'split_chunk', 'split_tables_torch', 'MIN_CHUNK']


@triton.jit
def _n_chunks(num, chunk):
    """Chunks of a key block's list of ``num`` entries in the split pass (at least 1: an empty list still stores
    its zeros)."""
    return tl.maximum((num + chunk - 1) // chunk, 1)


# sizes, table strides and chunk counts: not specialised (see block_sparse_fwd.SIZE_ARGS_FWD). Kept specialised:
# scr_half, the dV half's offset in the scratch (a multiple of BLOCK_N * HEAD_DIM: vectorised partial sums), and N
# in the dK/dV pass, whose divisibility vectorises the lse / delta loads of its inner loop (20-36 registers less
# for the window and 2D NA variants, tools/kernel_resources.py); N has two states (divisible by 16 or not), so
# that is at most one more compile per variant over any number of sizes.
SIZE_ARGS_DQ = ['N', 'n_groups', 'copies', 'stride_numz', 'stride_idxz', 'stride_idxm', 'stride_rz']
SIZE_ARGS_DKDV = ['n_groups', 'n_kb', 'n_slots', 'chunk', 'stride_numz', 'stride_idxz', 'stride_idxn', 'stride_ckz',
                  'stride_cumz', 'stride_rz']
SIZE_ARGS_REDUCE = ['N', 'n_slots', 'chunk', 'stride_numz', 'stride_cumz']


@triton.jit(do_not_specialize=SIZE_ARGS_DKDV)
def _block_sparse_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, Q_NUM, Q_IDX, QWIN, TOK, ROUTE, RPB, PERM, CK, CUM, SLOT, SCR, FLAG,
    stride_qz, stride_qh, stride_qm, stride_qk,
    stride_kz, stride_kh, stride_kn, stride_kk,
    stride_vz, stride_vh, stride_vn, stride_vk,
    stride_doz, stride_doh, stride_dom, stride_dok,
    stride_dkz, stride_dkh, stride_dkn, stride_dkk,
    stride_dvz, stride_dvh, stride_dvn, stride_dvk,
    stride_numz, stride_idxz, stride_idxn,
    stride_rz, stride_rpbh, stride_ckz, stride_cumz, scr_half,
    H, N, n_groups, rpb_r, qk_scale, sm_scale, n_kb, n_slots, chunk,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr, HAS_PERM: tl.constexpr, SPLIT: tl.constexpr,
    EXACT: tl.constexpr,
):
    pid_zh = tl.program_id(1)
    z = pid_zh // H
    h = pid_zh % H
    z64 = z.to(tl.int64)
    h64 = h.to(tl.int64)
    q_base = Q + z64 * stride_qz + h64 * stride_qh
    do_base = DO + z64 * stride_doz + h64 * stride_doh
    k_base = K + z64 * stride_kz + h64 * stride_kh
    v_base = V + z64 * stride_vz + h64 * stride_vh
    row_base = (z64 * H + h64) * N          # lse / delta are contiguous (B, H, N), sequence order
    route_z = ROUTE + z64 * stride_rz
    rpb_h = RPB + h64 * stride_rpbh
    if SPLIT:       # program = one chunk of a key block's list (module docstring, 3)
        c = tl.program_id(0)
        pid_n = tl.load(CK + z64 * stride_ckz + c)
        valid = pid_n < n_kb                # chunks past the last one (the grid is a bound) do nothing
        pid_n = tl.minimum(pid_n, n_kb - 1)
        num_all = tl.load(Q_NUM + z64 * stride_numz + pid_n)
        n_chunks = _n_chunks(num_all, chunk)
        j = c - (tl.load(CUM + z64 * stride_cumz + pid_n) - n_chunks)
        it0 = j * chunk
        it1 = tl.where(valid, tl.minimum(it0 + chunk, num_all), it0)
    else:
        pid_n = tl.program_id(0)
        it0 = 0
        it1 = tl.load(Q_NUM + z64 * stride_numz + pid_n)
    row = Q_IDX + z64 * stride_idxz + pid_n.to(tl.int64) * stride_idxn
    if EXACT:   # the exact pass: only where the dQ pass flagged a query block of this program's list
        flags = FLAG + pid_zh.to(tl.int64) * tl.cdiv(N, BLOCK_M)
        flagged = tl.zeros([64], tl.int32)
        for it in range(it0, it1, 64):      # 64 entries per step
            ok = it + tl.arange(0, 64) < it1
            flagged += tl.load(flags + tl.load(row + it + tl.arange(0, 64), mask=ok, other=0) // 2, mask=ok, other=0)
        if tl.sum(flagged, 0) == 0:
            return

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_i = tl.arange(0, BLOCK_M)
    rows_n = _rows(PERM, offs_n, N, HAS_PERM)
    k = tl.load(k_base + rows_n[:, None] * stride_kn + offs_d[None, :] * stride_kk, mask=offs_n[:, None] < N,
                other=0.0)
    v = tl.load(v_base + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vk, mask=offs_n[:, None] < N,
                other=0.0)
    k_y, k_x, k_g = _k_meta(offs_n, N, TOK, MASK_MODE, HAS_RPB)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    if EXACT:   # non-finite k rows read as 0; hit: the keys that a poisoned query row is allowed
        k = tl.where(_finite_rows(k)[:, None], k, 0.0)
        hit = tl.zeros([BLOCK_N], tl.int32) > 0

    for it in range(it0, it1):
        ent = tl.load(row + it)
        start_m = (ent // 2) * BLOCK_M
        partial = (ent % 2) == 1
        offs_m = start_m + offs_i
        m_ok = offs_m < N
        rows_m = _rows(PERM, offs_m, N, HAS_PERM)
        q = tl.load(q_base + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qk, mask=m_ok[:, None],
                    other=0.0)
        do = tl.load(do_base + rows_m[:, None] * stride_dom + offs_d[None, :] * stride_dok, mask=m_ok[:, None],
                     other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
        if EXACT:   # poisoned query rows (delta not finite) add nothing
            poisoned = ~(tl.abs(delta) < float('inf'))
            q = tl.where(poisoned[:, None], 0.0, q)
            do = tl.where(poisoned[:, None], 0.0, do)
        q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x = _q_meta(offs_m, N, QWIN, TOK, MASK_MODE, HAS_RPB)
        qk = tl.dot(q, tl.trans(k))
        s = _scores(qk, offs_m, offs_n, partial, q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x, k_y, k_x, k_g,
                    route_z, rpb_h, N, n_groups, rpb_r, qk_scale, MASK_MODE, HAS_RPB)
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(m_ok[:, None], p, 0.0)
        if EXACT:   # finite q, k: a pair is allowed iff its logit is not -inf (the mask's value)
            allowed = s > float('-inf')
            hit = hit | (tl.max((allowed & poisoned[:, None]).to(tl.int32), 0) > 0)
            keep = allowed & ~poisoned[:, None]
            p = tl.where(keep, p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        if EXACT:
            ds = tl.where(keep, ds, 0.0)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)

    if EXACT:
        dk = tl.where(hit[:, None], float('nan'), dk)
        dv = tl.where(hit[:, None], float('nan'), dv)
    mask = offs_n[:, None] < N
    if SPLIT:
        # a chunk of a longer list: its fp32 partial sums into scratch slot SLOT[kb] + j (summed by the reduce)
        # scalar conditions as 0/1 ints broadcast by arithmetic (the interpreter rejects tile & scalar-bool masks)
        part = valid.to(tl.int32) * (n_chunks > 1).to(tl.int32)
        slot = (pid_zh.to(tl.int64) * n_slots + tl.load(SLOT + z64 * stride_cumz + pid_n) + j) * (BLOCK_N * HEAD_DIM)
        tile = tl.arange(0, BLOCK_N)[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(SCR + slot + tile, dk, mask=tile * 0 + part > 0)
        tl.store(SCR + scr_half + slot + tile, dv, mask=tile * 0 + part > 0)
        mask = mask & (offs_d[None, :] * 0 + valid.to(tl.int32) * (n_chunks == 1).to(tl.int32) > 0)
    dk = dk * sm_scale
    tl.store(DK + z64 * stride_dkz + h64 * stride_dkh + rows_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkk,
             dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + z64 * stride_dvz + h64 * stride_dvh + rows_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvk,
             dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=SIZE_ARGS_REDUCE)
def _block_sparse_bwd_dkdv_reduce_kernel(
    DK, DV, Q_NUM, SLOT, SCR, PERM,
    stride_dkz, stride_dkh, stride_dkn, stride_dkk,
    stride_dvz, stride_dvh, stride_dvn, stride_dvk,
    stride_numz, stride_cumz, scr_half, H, N, sm_scale, n_slots, chunk,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HAS_PERM: tl.constexpr,
):
    """Program ``(key block, pid_zh)``: the sum of its chunks' partials (chunk order), stored as dK / dV; nothing
    for a key block of one chunk (its chunk stored it)."""
    pid_n = tl.program_id(0)
    pid_zh = tl.program_id(1)
    z64 = (pid_zh // H).to(tl.int64)
    h64 = (pid_zh % H).to(tl.int64)
    n_chunks = _n_chunks(tl.load(Q_NUM + z64 * stride_numz + pid_n), chunk)
    n_chunks = tl.where(n_chunks > 1, n_chunks, 0)
    slot = pid_zh.to(tl.int64) * n_slots + tl.load(SLOT + z64 * stride_cumz + pid_n)
    offs_d = tl.arange(0, HEAD_DIM)
    tile = tl.arange(0, BLOCK_N)[:, None] * HEAD_DIM + offs_d[None, :]
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for j in range(0, n_chunks):
        at = SCR + (slot + j) * (BLOCK_N * HEAD_DIM) + tile
        dk += tl.load(at)
        dv += tl.load(at + scr_half)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_n = _rows(PERM, offs_n, N, HAS_PERM)
    mask = (offs_n[:, None] < N) & (offs_d[None, :] * 0 + n_chunks > 1)
    tl.store(DK + z64 * stride_dkz + h64 * stride_dkh + rows_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkk,
             (dk * sm_scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + z64 * stride_dvz + h64 * stride_dvh + rows_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvk,
             dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=SIZE_ARGS_DQ)
def _block_sparse_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA, KV_NUM, KV_IDX, QWIN, TOK, ROUTE, RPB, PERM, DRPB, FLAG,
    stride_qz, stride_qh, stride_qm, stride_qk,
    stride_kz, stride_kh, stride_kn, stride_kk,
    stride_vz, stride_vh, stride_vn, stride_vk,
    stride_oz, stride_oh, stride_om, stride_ok,
    stride_doz, stride_doh, stride_dom, stride_dok,
    stride_dqz, stride_dqh, stride_dqm, stride_dqk,
    stride_numz, stride_idxz, stride_idxm,
    stride_rz, stride_rpbh, stride_drc,
    H, N, n_groups, rpb_r, qk_scale, sm_scale, copies,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr, HAS_PERM: tl.constexpr, EXACT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_zh = tl.program_id(1)
    if EXACT:   # the exact pass: only the programs whose first pass flagged a result that is not finite
        if tl.load(FLAG + pid_zh.to(tl.int64) * tl.num_programs(0) + pid_m) == 0:
            return
    z = pid_zh // H
    h = pid_zh % H
    z64 = z.to(tl.int64)
    h64 = h.to(tl.int64)
    q_base = Q + z64 * stride_qz + h64 * stride_qh
    do_base = DO + z64 * stride_doz + h64 * stride_doh
    k_base = K + z64 * stride_kz + h64 * stride_kh
    v_base = V + z64 * stride_vz + h64 * stride_vh
    row_base = (z64 * H + h64) * N
    route_z = ROUTE + z64 * stride_rz
    rpb_h = RPB + h64 * stride_rpbh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_j = tl.arange(0, BLOCK_N)
    m_ok = offs_m < N
    rows_m = _rows(PERM, offs_m, N, HAS_PERM)
    q = tl.load(q_base + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qk, mask=m_ok[:, None], other=0.0)
    do = tl.load(do_base + rows_m[:, None] * stride_dom + offs_d[None, :] * stride_dok, mask=m_ok[:, None],
                 other=0.0)
    lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=0.0)
    # delta = rowsum(dO * O) of this query block, stored for the dK/dV pass that runs after this one
    o = tl.load(O + z64 * stride_oz + h64 * stride_oh + rows_m[:, None] * stride_om + offs_d[None, :] * stride_ok,
                mask=m_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + row_base + offs_m, delta, mask=m_ok)
    q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x = _q_meta(offs_m, N, QWIN, TOK, MASK_MODE, HAS_RPB)
    if EXACT:   # poisoned query rows (delta not finite) add nothing
        poisoned = ~(tl.abs(delta) < float('inf'))
        q = tl.where(poisoned[:, None], 0.0, q)
        do = tl.where(poisoned[:, None], 0.0, do)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    drpb_h = DRPB + (pid_m % copies).to(tl.int64) * stride_drc + h64 * (2 * rpb_r - 1) * (2 * rpb_r - 1)

    num = tl.load(KV_NUM + z64 * stride_numz + pid_m)
    row = KV_IDX + z64 * stride_idxz + pid_m.to(tl.int64) * stride_idxm
    for it in range(0, num):
        ent = tl.load(row + it)
        start_n = (ent // 2) * BLOCK_N
        partial = (ent % 2) == 1
        offs_n = start_n + offs_j
        rows_n = _rows(PERM, offs_n, N, HAS_PERM)
        k = tl.load(k_base + rows_n[:, None] * stride_kn + offs_d[None, :] * stride_kk, mask=offs_n[:, None] < N,
                    other=0.0)
        v = tl.load(v_base + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vk, mask=offs_n[:, None] < N,
                    other=0.0)
        if EXACT:
            k = tl.where(_finite_rows(k)[:, None], k, 0.0)
        k_y, k_x, k_g = _k_meta(offs_n, N, TOK, MASK_MODE, HAS_RPB)
        qk = tl.dot(q, tl.trans(k))
        s = _scores(qk, offs_m, offs_n, partial, q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x, k_y, k_x, k_g,
                    route_z, rpb_h, N, n_groups, rpb_r, qk_scale, MASK_MODE, HAS_RPB)
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(m_ok[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        if EXACT:   # finite q, k: a pair is allowed iff its logit is not -inf (the mask's value)
            allowed = s > float('-inf')
            ds = tl.where(allowed & ~poisoned[:, None], ds, 0.0)
        dq += tl.dot(ds.to(k.dtype), k)
        if HAS_RPB:
            idx = _rpb_index(q_y, q_x, k_y, k_x, rpb_r)
            if EXACT:   # the first pass added every finite dS; NaN into the cells of the poisoned rows' pairs
                tl.atomic_add(drpb_h + idx, tl.where(allowed, float('nan'), 0.0),
                              mask=allowed & poisoned[:, None] & m_ok[:, None], sem='relaxed')
            else:
                tl.atomic_add(drpb_h + idx, ds, mask=p > 0.0, sem='relaxed')

    if EXACT:
        dq = tl.where(poisoned[:, None], float('nan'), dq)
    dq = dq * sm_scale
    tl.store(DQ + z64 * stride_dqz + h64 * stride_dqh + rows_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqk,
             dq.to(DQ.dtype.element_ty), mask=m_ok[:, None])
    if not EXACT:       # flag for the exact pass: a result that is not finite
        bad = ~(tl.sum(tl.abs(dq)) < float('inf'))
        tl.store(FLAG + pid_zh.to(tl.int64) * tl.num_programs(0) + pid_m, bad.to(tl.int32))


MIN_CHUNK = 32
"""Shortest chunk of a key block's list in the split dK/dV pass (module docstring, 3)."""


def split_chunk(n_qb: int, kv_width: int, n_kb: int, q_width: int, chunk: int | None = None) -> int:
    """Chunk length of the split dK/dV pass, or 0 for the one-program-per-key-block pass: the average list length
    bound ``n_qb * kv_width / n_kb`` (the tables' widths bound their total), at least ``MIN_CHUNK``; 0 when no list
    can be longer (``q_width``, the transposed table's width, bounds them). ``chunk`` forces a length (0: no
    split). The split cut the dK/dV kernel time at BiFormer-S's stage shapes with every query region routed to the
    same key regions, and chunks of 32 were the best of 8 / 16 / 32 / 64 (docs/benchmarks.md at 167f716,
    session 13); the scratch buffer (2 x the bound's chunks of fp32
    ``(block_n, D)`` tiles per batch and head for dK and dV) is 32 MiB at stage 1."""
    if chunk is None:
        chunk = max(MIN_CHUNK, cdiv(n_qb * kv_width, n_kb))
    return chunk if 0 < chunk < q_width else 0


@triton.jit(do_not_specialize=['s_num', 's_ck', 's_cum', 'n_kb', 'n_chunks_max', 'chunk', 'n_search'])
def _split_tables_kernel(Q_NUM, CK, CUM, SLOT, s_num, s_ck, s_cum, n_kb, n_chunks_max, chunk, n_search,
                         BLOCK: tl.constexpr):
    """Program z: :func:`split_tables_torch`'s tables of batch row z (running sums with a carry, then a binary
    search of each chunk in the stored running count)."""
    z = tl.program_id(0).to(tl.int64)
    carry = tl.full([], 0, tl.int32)
    carry_slot = tl.full([], 0, tl.int32)
    for k0 in range(0, n_kb, BLOCK):
        kb = k0 + tl.arange(0, BLOCK)
        ok = kb < n_kb
        num = tl.load(Q_NUM + z * s_num + kb, mask=ok, other=0)
        n_chunks = tl.where(ok, _n_chunks(num, chunk), 0)
        split = tl.where(n_chunks > 1, n_chunks, 0)
        tl.store(CUM + z * s_cum + kb, carry + tl.cumsum(n_chunks, 0), mask=ok)
        tl.store(SLOT + z * s_cum + kb, carry_slot + tl.cumsum(split, 0) - split, mask=ok)
        carry += tl.sum(n_chunks, 0)
        carry_slot += tl.sum(split, 0)
    tl.debug_barrier()                      # the running counts are read back by other threads of the program
    for c0 in range(0, n_chunks_max, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        lo = tl.zeros([BLOCK], tl.int32)    # the first key block whose running count exceeds c, in [lo, hi]
        hi = tl.full([BLOCK], 0, tl.int32) + n_kb
        for _ in range(n_search):
            mid = (lo + hi) // 2
            right = tl.load(CUM + z * s_cum + mid, mask=mid < n_kb, other=2 ** 30) <= c
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(right, hi, mid)
        tl.store(CK + z * s_ck + c, lo, mask=c < n_chunks_max)


def _split_tables(q_num: torch.Tensor, chunk: int, n_chunks_max: int):
    """:func:`split_tables_torch` in one launch (its ~10 PyTorch ops cost host time on every backward)."""
    bt, n_kb = q_num.shape
    ck = torch.empty((bt, n_chunks_max), device=q_num.device, dtype=torch.int32)
    cum, slot = (torch.empty((bt, n_kb), device=q_num.device, dtype=torch.int32) for _ in range(2))
    _split_tables_kernel[(bt,)](q_num, ck, cum, slot, q_num.stride(0), ck.stride(0), cum.stride(0), n_kb,
                                n_chunks_max, chunk, n_kb.bit_length(), BLOCK=1024, num_warps=4)
    return ck, cum, slot


def split_tables_torch(q_num: torch.Tensor, chunk: int, n_chunks_max: int):
    """Device tables of the split pass from ``q_num (Bt, n_kb)``: ``ck (Bt, n_chunks_max)`` the key block of each
    chunk (``n_kb`` past the last chunk), ``cum (Bt, n_kb)`` the inclusive running count of chunks per key block,
    ``slot (Bt, n_kb)`` the first scratch slot of each key block of more than one chunk; int32, no host sync.
    The twin of :func:`_split_tables`."""
    n_chunks = torch.clamp_min(torch.div(q_num + (chunk - 1), chunk, rounding_mode='floor'), 1)
    cum = torch.cumsum(n_chunks, 1, dtype=torch.int32)
    split = torch.where(n_chunks > 1, n_chunks, 0)
    slot = torch.cumsum(split, 1, dtype=torch.int32) - split
    ids = torch.arange(n_chunks_max, device=q_num.device, dtype=torch.int32).expand(q_num.shape[0], -1)
    ck = torch.searchsorted(cum, ids.contiguous(), right=True, out_int32=True)
    return ck, cum, slot


def block_sparse_bwd(do, q, k, v, o, lse, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows, scale: float,
                     mask_mode: int, n_groups: int, config: Config, out=None, chunk: int | None = None):
    """Launch dQ (with delta) and then dK/dV. Shapes as ``block_sparse_fwd`` (memory order, ``rows`` as there); lse
    (B, H, N) fp32 from the forward. ``chunk``: the split dK/dV pass's chunk length (:func:`split_chunk`; None:
    its default, 0: no split).

    Returns dq, dk, dv (q/k/v's shapes and dtypes, memory order; written into ``out=(dq, dk, dv)`` when given,
    any strides, else new contiguous tensors) and drpb (like rpb, fp32 summed over the atomic replicas, cast to
    rpb's dtype) or None.
    """
    b, h, n, d = q.shape
    bm, bn = config.block_m, config.block_n
    n_qb, n_kb = cdiv(n, bm), cdiv(n, bn)
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    dummy = kv_num
    perm = rows if rows is not None else dummy
    has_perm = rows is not None
    dq, dk, dv = out if out is not None else (torch.empty(t.shape, device=t.device, dtype=t.dtype) for t in (q, k, v))
    meta = (qwin if qwin is not None else dummy, tok if tok is not None else dummy,
            route if route is not None else dummy, rpb if rpb is not None else q, perm)
    s_route = route.stride(0) if route is not None else 0
    s_rpb = rpb.stride(0) if rpb is not None else 0
    rpb_r = (rpb.shape[-1] + 1) // 2 if rpb is not None else 1
    common = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, MASK_MODE=mask_mode, HAS_RPB=rpb is not None,
                  HAS_PERM=has_perm, num_warps=config.num_warps, num_stages=config.num_stages)
    if rpb is not None:
        copies = max(1, min(64, n_qb))
        drpb_buf = torch.zeros((copies,) + tuple(rpb.shape), device=q.device, dtype=torch.float32)
    else:
        copies, drpb_buf = 1, delta
    flag = torch.empty((b * h, n_qb), device=q.device, dtype=torch.int32)   # written by every program
    for exact in (False, True):   # the first pass, then the exact pass of the flagged programs (module docstring)
        _block_sparse_bwd_dq_kernel[(n_qb, b * h)](
            q, k, v, o, do, dq, lse, delta, kv_num, kv_idx, *meta, drpb_buf, flag,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(), *dq.stride(),
            *_table_strides(kv_num, kv_idx), s_route, s_rpb,
            drpb_buf.stride(0) if rpb is not None else 0,
            h, n, n_groups, rpb_r, scale * 1.4426950408889634, scale, copies, EXACT=exact, **common)
    chunk = split_chunk(n_qb, kv_idx.shape[-1], n_kb, q_idx.shape[-1], chunk)
    q_strides = _table_strides(q_num, q_idx)     # batch stride 0 when the tables are shared
    if chunk:
        entries = cdiv(n_qb * kv_idx.shape[-1], chunk)
        n_chunks_max, n_slots = n_kb + entries, 2 * entries      # bounds (module docstring, 3)
        ck, cum, slot = _split_tables(q_num, chunk, n_chunks_max)
        scr = torch.empty((2, b * h, n_slots, bn, d), device=q.device, dtype=torch.float32)
        split = (ck, cum, slot, scr)
        s_ck, s_cum, scr_half = (ck.stride(0), cum.stride(0), scr.stride(0)) if q_strides[0] else (0, 0, scr.stride(0))
    else:
        n_chunks_max, n_slots, split, s_ck, s_cum, scr_half = n_kb, 0, (dummy,) * 4, 0, 0, 0
    for exact in (False, True):   # the exact pass reads the dQ pass's flags (module docstring)
        _block_sparse_bwd_dkdv_kernel[(n_chunks_max, b * h)](
            q, k, v, do, dk, dv, lse, delta, q_num, q_idx, *meta, *split, flag,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
            *q_strides, s_route, s_rpb, s_ck, s_cum, scr_half,
            h, n, n_groups, rpb_r, scale * 1.4426950408889634, scale, n_kb, n_slots, max(chunk, 1),
            SPLIT=bool(chunk), EXACT=exact, **common)
    if chunk:
        _block_sparse_bwd_dkdv_reduce_kernel[(n_kb, b * h)](
            dk, dv, q_num, slot, scr, perm, *dk.stride(), *dv.stride(), q_strides[0], s_cum, scr_half, h, n, scale,
            n_slots, chunk, HEAD_DIM=d, BLOCK_N=bn, HAS_PERM=has_perm, num_warps=config.num_warps)
    drpb = drpb_buf.sum(0).to(rpb.dtype) if rpb is not None else None
    return dq, dk, dv, drpb
