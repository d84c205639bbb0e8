"""Block-sparse flash attention, backward pass (Triton).

Design note
-----------
Two launches (FlashAttention-2 / Triton's fused-attention tutorial use three: a separate preprocess computes
``delta = rowsum(dO * O)`` first; here the dQ pass computes the delta of its own query block, which it needs
anyway, and stores it for the dK/dV pass: one launch less per backward, which at feature-map sizes is host time):

1. dQ: program ``(pid_m, pid_zh)`` owns query block ``pid_m``: ``delta`` of its rows (stored, (B, H, N) fp32),
   then it walks the forward table and accumulates ``dQ += dS K``. When a relative
   position bias is present this pass also scatters ``dS`` into ``drpb`` with fp32 atomics; to cut contention the
   buffer has ``copies`` replicas (picked by ``pid_m % copies``) that the launcher sums. The atomics are
   ``relaxed`` (Triton's default ``acq_rel`` fences every one of them; nothing reads the sums before the kernel
   ends): dQ+bias 1.2-1.6x faster on an H200. dRPB is therefore deterministic only up to fp32 summation order;
   dQ, dK, dV are bitwise deterministic.
2. dK/dV: program ``(pid_n, pid_zh)`` owns key block ``pid_n``; it walks the *transposed* table (``q_num``,
   ``q_idx``: the query blocks that visit this key block, built by ``patterns.py``), recomputes
   ``P = exp2(S - lse)`` and accumulates ``dV += P^T dO`` and ``dK += dS^T Q`` in registers; no atomics.

``dS = P * (dP - delta)`` is the gradient of the natural-log logits ``scale * q.k + bias``: ``dQ = scale * dS K``,
``dK = scale * dS^T Q``, ``dbias = sum dS`` per bias cell. The logits, masks and bias lookup are the forward's
helpers (``_scores``), so the passes agree bit for bit on which pairs exist.

Layout and limits: as the forward (``block_sparse_fwd.py``); dq/dk/dv are written in q/k/v's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._host import cdiv
from .block_sparse_fwd import Config, _k_meta, _q_meta, _rows, _rpb_index, _scores, _table_strides

__all__ = ['block_sparse_bwd']


@triton.jit
def _block_sparse_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, Q_NUM, Q_IDX, QWIN, TOK, ROUTE, RPB, PERM,
    stride_qz, stride_qh, stride_qm, stride_qk,
    stride_kz, stride_kh, stride_kn, stride_kk,
    stride_vz, stride_vh, stride_vn, stride_vk,
    stride_doz, stride_doh, stride_dom, stride_dok,
    stride_dkz, stride_dkh, stride_dkn, stride_dkk,
    stride_dvz, stride_dvh, stride_dvn, stride_dvk,
    stride_numz, stride_idxz, stride_idxn,
    stride_rz, stride_rpbh,
    H, N, n_groups, rpb_r, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr, HAS_PERM: tl.constexpr,
):
    pid_n = tl.program_id(0)
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

    num = tl.load(Q_NUM + z64 * stride_numz + pid_n)
    row = Q_IDX + z64 * stride_idxz + pid_n.to(tl.int64) * stride_idxn
    for it in range(0, num):
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
        q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x = _q_meta(offs_m, N, QWIN, TOK, MASK_MODE, HAS_RPB)
        qk = tl.dot(q, tl.trans(k))
        s = _scores(qk, offs_m, offs_n, partial, q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x, k_y, k_x, k_g,
                    route_z, rpb_h, N, n_groups, rpb_r, qk_scale, MASK_MODE, HAS_RPB)
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(m_ok[:, None], p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)

    dk = dk * sm_scale
    mask = offs_n[:, None] < N
    tl.store(DK + z64 * stride_dkz + h64 * stride_dkh + rows_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkk,
             dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + z64 * stride_dvz + h64 * stride_dvh + rows_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvk,
             dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _block_sparse_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA, KV_NUM, KV_IDX, QWIN, TOK, ROUTE, RPB, PERM, DRPB,
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
    MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr, HAS_PERM: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_zh = tl.program_id(1)
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
        k_y, k_x, k_g = _k_meta(offs_n, N, TOK, MASK_MODE, HAS_RPB)
        qk = tl.dot(q, tl.trans(k))
        s = _scores(qk, offs_m, offs_n, partial, q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x, k_y, k_x, k_g,
                    route_z, rpb_h, N, n_groups, rpb_r, qk_scale, MASK_MODE, HAS_RPB)
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(m_ok[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
        if HAS_RPB:
            idx = _rpb_index(q_y, q_x, k_y, k_x, rpb_r)
            tl.atomic_add(drpb_h + idx, ds, mask=p > 0.0, sem='relaxed')

    dq = dq * sm_scale
    tl.store(DQ + z64 * stride_dqz + h64 * stride_dqh + rows_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqk,
             dq.to(DQ.dtype.element_ty), mask=m_ok[:, None])


def block_sparse_bwd(do, q, k, v, o, lse, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows, scale: float,
                     mask_mode: int, n_groups: int, config: Config, out=None):
    """Launch dQ (with delta) and then dK/dV. Shapes as ``block_sparse_fwd`` (memory order, ``rows`` as there); lse
    (B, H, N) fp32 from the forward.

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
    _block_sparse_bwd_dq_kernel[(n_qb, b * h)](
        q, k, v, o, do, dq, lse, delta, kv_num, kv_idx, *meta, drpb_buf,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(), *dq.stride(),
        *_table_strides(kv_num, kv_idx), s_route, s_rpb,
        drpb_buf.stride(0) if rpb is not None else 0,
        h, n, n_groups, rpb_r, scale * 1.4426950408889634, scale, copies, **common)
    _block_sparse_bwd_dkdv_kernel[(n_kb, b * h)](
        q, k, v, do, dk, dv, lse, delta, q_num, q_idx, *meta,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        *_table_strides(q_num, q_idx), s_route, s_rpb,
        h, n, n_groups, rpb_r, scale * 1.4426950408889634, scale, **common)
    drpb = drpb_buf.sum(0).to(rpb.dtype) if rpb is not None else None
    return dq, dk, dv, drpb
