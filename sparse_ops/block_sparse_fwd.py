"""Block-sparse flash attention, forward pass (Triton).

Design note
-----------
Algorithm: FlashAttention-2 forward over a block table (FlexAttention's ``BlockMask`` idea). Program
``(pid_m, pid_zh)`` owns query block ``pid_m`` of batch ``z = pid_zh // H``, head ``h = pid_zh % H``; it loads its
``BLOCK_M x HEAD_DIM`` query tile once and walks the ``kv_num[z, pid_m]`` key blocks listed in ``kv_idx[z, pid_m]``
(entries ``block * 2 + partial``, see ``patterns.py``), keeping a running max / sum in base 2 (``1/ln 2`` folded into
the scale). Full blocks skip the element mask; partial blocks evaluate it from per-token int32 metadata chosen by the
constexpr ``MASK_MODE`` (one specialised kernel per mode). An optional relative position bias ``rpb (H, 2r-1, 2r-1)``
is gathered per pair from the tokens' 2D offsets. Outputs: ``o`` like q and ``lse (B, H, N)`` fp32 (base-2
log-sum-exp, used by the backward).

Layout: q, k, v, o ``(B, H, N, D)`` with any strides (``stride_qz, stride_qh, stride_qm, stride_qk``); batch/head
base offsets in int64. Tables ``(Bt, n_qb, max_kv)`` with Bt in {1, B} (batch stride 0 when shared). With
``HAS_PERM`` the sequence is a permutation of memory rows (``PERM[i]`` = memory row of sequence position i: 2D NA
in sub-grid-major Hilbert order, routing in region order): tiles are gathered row by row and o is scattered back,
so no permuted copy of q, k, v, o exists; ``lse`` stays in sequence order. Loop-invariant query metadata is loaded
once per program (``_q_meta``), key metadata per key tile (``_k_meta``).

Load schedule: with ``HAS_PERM`` a key tile's address hangs on a chain of loads (table entry, then the
permutation's rows, then k / v) that Triton's pipeliner leaves synchronous: each iteration would wait for it.
That loop prefetches by hand: it reads table entries two ahead and issues the next tile's k / v loads (into
registers) before this tile's dots, so their latency overlaps this tile's math. Tiles in memory order (no
``HAS_PERM``) keep the plain loop, which the pipeliner handles with async copies. docs/benchmarks.md ("Current
kernels; routing and the forward load schedule") has the measurement behind both choices.

NaN and inf (the rule: docs/design.md, "NaN and inf"): the launcher runs the kernel twice. ``EXACT=False`` is the
plain loop, in which a NaN / inf in a v row reaches every query of a tile that loads it (``0 * NaN`` in ``P V``); it
ends with one reduction over o and stores a flag per program (``FLAG``: o not finite, or a real row that saw no key,
which a q row of +-inf gives). ``EXACT=True`` (its own compiled variant: its registers do not touch the first
pass's) returns at once where the flag is 0; a flagged program walks its list again with non-finite q / k / v rows
read as 0, flags a query whose q row is non-finite or whose allowed pair (logit not -inf) has a non-finite k or v
row, and rewrites its o tile (flagged rows NaN in every channel) and lse. One extra launch per forward, always (no
host sync); the backward's dQ pass runs the same scheme (``block_sparse_bwd.py``).

Limits: D in {16, 32, 64, 128} (the tile is exactly D wide); fp16 / bf16; fp32 runs tl.dot in tf32 on GPUs
(``input_precision`` default; ~1e-3 relative error) and exactly under ``TRITON_INTERPRET=1``. Query rows that see no
key (only padding rows of the last block) produce 0. Grid axis 1 is ``B * H`` (<= 65535). Its rate on computed
blocks is below FlexAttention's full-block rate (docs/benchmarks.md, "Attention"): no warp specialisation / TMA.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl

from ._host import cdiv

__all__ = ['Config', 'CONFIGS', 'INTERPRET_CONFIGS', 'SMALL_REGION_TOKENS', 'configs_for', 'default_config',
           'block_sparse_fwd']

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------------
# autotune space (data): tables are built per (block_m, block_n), so the space is searched by our launcher
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    def __str__(self):
        return f'm{self.block_m}-n{self.block_n}-w{self.num_warps}-s{self.num_stages}'


def _keep(c: Config, head_dim: int) -> bool:
    """Prune rule: 8 warps only for 128-row tiles (always there from D = 64); 32 x 32 and 64 x 16 tiles, 2 stages;
    16-row tiles only as the small-region routing default (16 x 16, 1 warp)."""
    if c.block_m == 16:
        return c == Config(16, 16, 1, 2)
    if c.num_warps == 8 and c.block_m < 128:
        return False
    if c.block_m == 128 and c.num_warps == 4 and head_dim >= 64:
        return False
    if c.block_m == 32 and (c.block_n != 32 or c.num_stages != 2):
        return False
    if c.block_n == 16 and (c.block_m != 64 or c.num_stages != 2):
        return False
    return True


CONFIGS = [Config(bm, bn, w, s) for bm in (32, 64, 128) for bn in (16, 32, 64) for w in (4, 8) for s in (2, 3)]
CONFIGS.append(Config(16, 16, 1, 2))   # small routing regions (default_config)
# what the interpreter runs (warps / stages have no meaning there); tests run all of them
INTERPRET_CONFIGS = [Config(bm, bn, 1, 1) for bm in (16, 32) for bn in (16, 32)]


def _interpret() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def configs_for(head_dim: int, interpret: bool | None = None) -> list[Config]:
    """The pruned search space for a head dim (the interpreter space on CPU)."""
    if interpret if interpret is not None else _interpret():
        return list(INTERPRET_CONFIGS)
    return [c for c in CONFIGS if _keep(c, head_dim)]


SMALL_REGION_TOKENS = 32
"""Routing regions of at most this many tokens get 16 x 16 tiles (see :func:`default_config`)."""


def default_config(head_dim: int, device: torch.device | None = None, mask_mode: int | None = None,
                   region_tokens: int | None = None) -> Config:
    """Heuristic config; the interpreter gets 16 x 16 tiles.

    64 x 32 tiles with 4 warps, 2 stages won forward+backward in most (size, pattern) cells of the attention
    benchmark among {64x64, 64x32, 128x64/8 warps} (docs/benchmarks.md; its JSON has each cell's winner); aligned
    Hilbert windows (64 x 64) and routing at 256 x 256 were the exceptions. ``mask_mode`` is accepted for
    pattern-specific choices.

    ``region_tokens`` (routing: tokens of the largest region): regions of <= ``SMALL_REGION_TOKENS`` tokens get
    16 x 16 tiles with one warp. A query block then holds one region (or a few tiny ones) and visits only its
    routed key regions; a 64-row block of 16-token regions visits the union of four regions' top-k, most of it
    masked. Measured (fwd+bwd kernel time at BiFormer-S's stage shapes, docs/benchmarks.md at 167f716, session 7):
    16 x 16 tiles win for 16- and 24-token regions, 64 x 32 stays best for 64- and 256-token regions.
    """
    if (device is not None and device.type != 'cuda') or _interpret():
        return INTERPRET_CONFIGS[0]
    if region_tokens is not None and region_tokens <= SMALL_REGION_TOKENS:
        return Config(16, 16, 1, 2)
    return Config(64, 32, 4, 2)


# ----------------------------------------------------------------------------------------------------------------
# shared device helpers (used by the backward kernels too)
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _rows(PERM, offs, N, HAS_PERM: tl.constexpr):
    """Memory row of each sequence position: PERM[offs] when the pattern reads tokens through a permutation."""
    if HAS_PERM:
        return tl.load(PERM + offs, mask=offs < N, other=0)
    else:
        return offs


@triton.jit
def _q_meta(offs_m, N, QWIN, TOK, MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr):
    """Loop-invariant metadata of a query tile, each [BLOCK_M] int32 (0 where the mode does not use it):
    lo, hi (interval, or rows of the 2D box), xlo, xhi (columns of the 2D box), group, y, x."""
    ok = offs_m < N
    lo = tl.zeros_like(offs_m)
    hi = lo
    xlo = lo
    xhi = lo
    g = lo
    y = lo
    x = lo
    if MASK_MODE == 1 or MASK_MODE == 2:
        lo = tl.load(QWIN + offs_m * 4 + 0, mask=ok, other=0)
        hi = tl.load(QWIN + offs_m * 4 + 1, mask=ok, other=-1)
    if MASK_MODE == 2:
        xlo = tl.load(QWIN + offs_m * 4 + 2, mask=ok, other=0)
        xhi = tl.load(QWIN + offs_m * 4 + 3, mask=ok, other=-1)
    if MASK_MODE == 2 or MASK_MODE == 3:
        g = tl.load(TOK + offs_m * 4 + 2, mask=ok, other=0)
    if HAS_RPB:
        y = tl.load(TOK + offs_m * 4 + 0, mask=ok, other=0)
        x = tl.load(TOK + offs_m * 4 + 1, mask=ok, other=0)
    return lo, hi, xlo, xhi, g, y, x


@triton.jit
def _k_meta(offs_n, N, TOK, MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr):
    """Metadata of a key tile, each [BLOCK_N] int32: y, x, group (0 where unused)."""
    ok = offs_n < N
    y = tl.zeros_like(offs_n)
    x = y
    g = y
    if MASK_MODE == 2 or HAS_RPB:
        y = tl.load(TOK + offs_n * 4 + 0, mask=ok, other=0)
        x = tl.load(TOK + offs_n * 4 + 1, mask=ok, other=0)
    if MASK_MODE == 2 or MASK_MODE == 3:
        g = tl.load(TOK + offs_n * 4 + 2, mask=ok, other=-1)
    return y, x, g


@triton.jit
def _rpb_index(q_y, q_x, k_y, k_x, rpb_r):
    """Flat index into one head's (2r-1) x (2r-1) bias for every pair of the tile: [BLOCK_M, BLOCK_N] int32."""
    dy = tl.minimum(tl.maximum(k_y[None, :] - q_y[:, None], 1 - rpb_r), rpb_r - 1) + rpb_r - 1
    dx = tl.minimum(tl.maximum(k_x[None, :] - q_x[:, None], 1 - rpb_r), rpb_r - 1) + rpb_r - 1
    return dy * (2 * rpb_r - 1) + dx


@triton.jit
def _scores(qk, offs_m, offs_n, partial, q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x, k_y, k_x, k_g,
            ROUTE_Z, RPB_H, N, n_groups, rpb_r, qk_scale, MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr):
    """Raw q.k^T tile [BLOCK_M, BLOCK_N] fp32 -> base-2 logits with position bias and, for partial blocks, the
    element mask of ``MASK_MODE`` (see patterns.py): -inf where a pair is not allowed."""
    s = qk * qk_scale
    if HAS_RPB:
        idx = _rpb_index(q_y, q_x, k_y, k_x, rpb_r)
        s += tl.load(RPB_H + idx).to(tl.float32) * 1.4426950408889634
    if partial:
        ok = (offs_n[None, :] < N) & (offs_m[:, None] < N)
        if MASK_MODE == 1:    # interval on sequence positions
            ok = ok & (offs_n[None, :] >= q_lo[:, None]) & (offs_n[None, :] <= q_hi[:, None])
        elif MASK_MODE == 2:  # same sub-grid, key inside the query's box (sub-grid units)
            ok = ok & (q_g[:, None] == k_g[None, :])
            ok = ok & (k_y[None, :] >= q_lo[:, None]) & (k_y[None, :] <= q_hi[:, None])
            ok = ok & (k_x[None, :] >= q_xlo[:, None]) & (k_x[None, :] <= q_xhi[:, None])
        elif MASK_MODE == 3:  # routed (query group, key group) pairs: bit k_g of row q_g of the bit rows
            # a key tile's groups are consecutive (routing.py), so it reads 2 words (3 for 64-key tiles) per query
            # row with 1D loads; a 2D gather from a dense table made Triton compute the softmax twice
            words = (n_groups + 31) // 32
            k_ok = offs_n < N
            g0 = tl.min(tl.where(k_ok, k_g, n_groups), 0)
            kg = tl.where(k_ok, k_g, g0)
            w0 = g0 // 32
            row = ROUTE_Z + q_g * words + w0
            w_m = offs_m * 0 + w0        # the word per query row (tensor masks: the interpreter rejects scalar ones)
            m_ok = offs_m < N
            kw = (kg // 32 - w0)[None, :]
            word = tl.where(kw == 0, tl.load(row, mask=m_ok & (w_m < words), other=0)[:, None],
                            tl.load(row + 1, mask=m_ok & (w_m + 1 < words), other=0)[:, None])
            if offs_n.shape[0] > 32:
                word = tl.where(kw == 2, tl.load(row + 2, mask=m_ok & (w_m + 2 < words), other=0)[:, None], word)
            ok = ok & (((word >> (kg % 32)[None, :]) & 1) != 0)
        s = tl.where(ok, s, float('-inf'))
    return s


@triton.jit
def _kv_tile(k_base, v_base, PERM, ent, offs_j, offs_d, N, lim, stride_kn, stride_kk, stride_vn, stride_vk,
             BLOCK_N: tl.constexpr, HAS_PERM: tl.constexpr):
    """Key block of table entry ``ent``: its sequence positions [BLOCK_N] and k, v tiles [BLOCK_N, D] (0 from
    position ``lim`` on: N, or 0 for no load)."""
    offs_n = (ent // 2) * BLOCK_N + offs_j
    rows_n = _rows(PERM, offs_n, N, HAS_PERM)
    ok = offs_n[:, None] < lim
    k = tl.load(k_base + rows_n[:, None] * stride_kn + offs_d[None, :] * stride_kk, mask=ok, other=0.0)
    v = tl.load(v_base + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vk, mask=ok, other=0.0)
    return offs_n, k, v


@triton.jit
def _finite_rows(x):
    """[rows] bool: every element of the row is finite (False for a NaN or +-inf anywhere in it)."""
    return tl.min((tl.abs(x) < float('inf')).to(tl.int32), 1) > 0


# ----------------------------------------------------------------------------------------------------------------
# kernel
# ----------------------------------------------------------------------------------------------------------------
# Integer arguments that change with the input size (sequence length, table shapes, lse strides, routed regions as
# clamped to the map) are not specialised
# (``do_not_specialize``): a new H x W then compiles nothing new (multi-scale training). The q / k / v / o strides and
# the pointers stay specialised: their divisibility by 16 is what lets the tile loads vectorise, and with a channel
# count that is a multiple of 16 it does not change with the size (``tools/specialization_keys.py`` counts the keys).
SIZE_ARGS_FWD = ['N', 'n_groups', 'stride_lz', 'stride_lh', 'stride_numz', 'stride_idxz', 'stride_idxm', 'stride_rz']


@triton.jit(do_not_specialize=SIZE_ARGS_FWD)
def _block_sparse_fwd_kernel(
    Q, K, V, O, O2, LSE, KV_NUM, KV_IDX, QWIN, TOK, ROUTE, RPB, PERM, FLAG,
    stride_qz, stride_qh, stride_qm, stride_qk,
    stride_kz, stride_kh, stride_kn, stride_kk,
    stride_vz, stride_vh, stride_vn, stride_vk,
    stride_oz, stride_oh, stride_om, stride_ok,
    stride_lz, stride_lh,
    stride_numz, stride_idxz, stride_idxm,
    stride_rz, stride_rpbh,
    H, N, n_groups, rpb_r, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_MODE: tl.constexpr, HAS_RPB: tl.constexpr, HAS_PERM: tl.constexpr, SPLIT_P: tl.constexpr,
    HAS_O2: tl.constexpr, EXACT: tl.constexpr,
):
    tl.static_assert(HEAD_DIM >= 16)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
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
    k_base = K + z64 * stride_kz + h64 * stride_kh
    v_base = V + z64 * stride_vz + h64 * stride_vh
    route_z = ROUTE + z64 * stride_rz
    rpb_h = RPB + h64 * stride_rpbh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_j = tl.arange(0, BLOCK_N)
    rows_m = _rows(PERM, offs_m, N, HAS_PERM)
    q = tl.load(q_base + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qk, mask=offs_m[:, None] < N,
                other=0.0)
    q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x = _q_meta(offs_m, N, QWIN, TOK, MASK_MODE, HAS_RPB)
    if EXACT:   # non-finite rows read as 0; hit: the queries with a non-finite q row or allowed k / v row
        hit = ~_finite_rows(q)
        q = tl.where(hit[:, None], 0.0, q)

    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    num = tl.load(KV_NUM + z64 * stride_numz + pid_m)
    row = KV_IDX + z64 * stride_idxz + pid_m.to(tl.int64) * stride_idxm
    if HAS_PERM:   # gathered rows: entries two ahead, the next tile's k / v loads issued before this tile's math
        ent_a = tl.load(row, mask=num > 0, other=0)
        ent_b = tl.load(row + 1, mask=num > 1, other=0)
        offs_c, k_c, v_c = _kv_tile(k_base, v_base, PERM, ent_a, offs_j, offs_d, N, tl.where(num > 0, N, 0),
                                    stride_kn, stride_kk, stride_vn, stride_vk, BLOCK_N, HAS_PERM)
    for it in range(0, num):
        if HAS_PERM:
            ent = ent_a
            offs_n = offs_c
            k = k_c
            v = v_c
            ent_a = ent_b
            ent_b = tl.load(row + it + 2, mask=it + 2 < num, other=0)
            offs_c, k_c, v_c = _kv_tile(k_base, v_base, PERM, ent_a, offs_j, offs_d, N,
                                        tl.where(it + 1 < num, N, 0),
                                        stride_kn, stride_kk, stride_vn, stride_vk, BLOCK_N, HAS_PERM)
        else:
            ent = tl.load(row + it)
            offs_n, k, v = _kv_tile(k_base, v_base, PERM, ent, offs_j, offs_d, N, N,
                                    stride_kn, stride_kk, stride_vn, stride_vk, BLOCK_N, HAS_PERM)
        partial = (ent % 2) == 1
        if EXACT:
            kv_ok = _finite_rows(k) & _finite_rows(v)
            k = tl.where(kv_ok[:, None], k, 0.0)
            v = tl.where(kv_ok[:, None], v, 0.0)
        k_y, k_x, k_g = _k_meta(offs_n, N, TOK, MASK_MODE, HAS_RPB)
        qk = tl.dot(q, tl.trans(k))
        s = _scores(qk, offs_m, offs_n, partial, q_lo, q_hi, q_xlo, q_xhi, q_g, q_y, q_x, k_y, k_x, k_g,
                    route_z, rpb_h, N, n_groups, rpb_r, qk_scale, MASK_MODE, HAS_RPB)
        if EXACT:   # finite q, k: a pair is allowed iff its logit is not -inf (the mask's value)
            hit = hit | (tl.max(((s > float('-inf')) & ~kv_ok[None, :]).to(tl.int32), 1) > 0)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float('-inf'), 0.0, m_new)      # rows with nothing allowed yet
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        p_hi = p.to(v.dtype)
        acc = acc * alpha[:, None] + tl.dot(p_hi, v)
        if SPLIT_P:   # P = hi + lo in v's dtype: O is the fp32 P times V (see o_dtype in the launcher)
            acc += tl.dot((p - p_hi.to(tl.float32)).to(v.dtype), v)
        m_i = m_new

    l_use = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_use[:, None]
    if EXACT:
        o = tl.where(hit[:, None], float('nan'), o)
    lse = tl.where(m_i == float('-inf'), 0.0, m_i) + tl.math.log2(l_use)
    o_off = z64 * stride_oz + h64 * stride_oh + rows_m[:, None] * stride_om + offs_d[None, :] * stride_ok
    tl.store(O + o_off, o.to(O.dtype.element_ty), mask=offs_m[:, None] < N)
    if HAS_O2:      # o in q's dtype too, O's layout (the caller's output: no cast kernel)
        tl.store(O2 + o_off, o.to(O2.dtype.element_ty), mask=offs_m[:, None] < N)
    tl.store(LSE + z64 * stride_lz + h64 * stride_lh + offs_m, lse, mask=offs_m < N)
    if not EXACT:   # flag for the exact pass: a result that is not finite, or a real row that saw no key
        bad = ~(tl.sum(tl.abs(o), 1) < float('inf')) | ((l_i == 0.0) & (offs_m < N))
        tl.store(FLAG + pid_zh.to(tl.int64) * tl.num_programs(0) + pid_m, tl.max(bad.to(tl.int32), 0))


# ----------------------------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------------------------
def _table_strides(num: torch.Tensor, idx: torch.Tensor):
    """Batch stride 0 when the table is shared by the batch (Bt == 1)."""
    shared = num.shape[0] == 1
    return (0 if shared else num.stride(0)), (0 if shared else idx.stride(0)), idx.stride(1)


def block_sparse_fwd(q, k, v, kv_num, kv_idx, qwin, tok, route, rpb, rows, scale: float, mask_mode: int,
                     n_groups: int, config: Config, o_dtype: torch.dtype | None = None, heads_last: bool = False,
                     cast: bool = False):
    """Launch the forward kernel.

    q, k, v: (B, H, N, D) in memory order; ``rows (N,)`` int32 or None: memory row of each sequence position
    (the pattern's order), else memory order is the sequence order. kv_num (Bt, n_qb) / kv_idx (Bt, n_qb, max_kv)
    int32 built for ``config``'s block sizes; qwin / tok (N, 4) int32 or None; route (B, G, W) int32 bit rows or None;
    rpb (H, 2r-1, 2r-1) contiguous or None. Returns o (B, H, N, D) like q (memory order) and lse (B, H, N) fp32
    (base 2, sequence order). ``o_dtype`` (e.g. fp32) overrides o's dtype: the kernel stores its fp32 accumulator
    rounded to that type; an fp32 o of 16-bit inputs also gets ``P V`` with the fp32 P (``SPLIT_P``: P = hi + lo in
    v's dtype, two dots), so that ``rowsum(dO * O)`` in the backward is the backward's own ``sum_j P_ij dP_ij``
    (``block_sparse.py``). ``heads_last=True`` lays o out as a ``(B, N, H, D)`` buffer seen as ``(B, H, N, D)``
    (what the models' output projection wants: their ``transpose(1, 2).reshape(B, N, H * D)`` is then a view).
    ``cast=True`` (with ``o_dtype``) has the kernel also store o rounded to q's dtype in o's layout (the caller's
    output: no cast kernel). Returns ``(o, lse, out)``: out is that second output, or o itself.
    """
    b, h, n, d = q.shape
    if heads_last:
        o = torch.empty((b, n, h, d), device=q.device, dtype=o_dtype or q.dtype).transpose(1, 2)
    else:
        o = torch.empty(q.shape, device=q.device, dtype=o_dtype or q.dtype)
    lse = torch.empty((b, h, n), device=q.device, dtype=torch.float32)
    n_qb = cdiv(n, config.block_m)
    assert kv_num.shape[-1] == n_qb, (kv_num.shape, n_qb)
    s_numz, s_idxz, s_idxm = _table_strides(kv_num, kv_idx)
    dummy = kv_num
    rpb_r = (rpb.shape[-1] + 1) // 2 if rpb is not None else 1
    grid = (n_qb, b * h)
    flag = torch.empty((b * h, n_qb), device=q.device, dtype=torch.int32)   # written by every program
    cast = cast and o.dtype != q.dtype
    out = torch.empty_like(o, dtype=q.dtype) if cast else o       # o's strides (empty_like keeps a dense layout)
    for exact in (False, True):   # the first pass, then the exact pass of the flagged programs (module docstring)
        _block_sparse_fwd_kernel[grid](
            q, k, v, o, out, lse, kv_num, kv_idx,
            qwin if qwin is not None else dummy, tok if tok is not None else dummy,
            route if route is not None else dummy, rpb if rpb is not None else q, rows if rows is not None else dummy,
            flag,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), lse.stride(0), lse.stride(1),
            s_numz, s_idxz, s_idxm,
            route.stride(0) if route is not None else 0, rpb.stride(0) if rpb is not None else 0,
            h, n, n_groups, rpb_r, scale * LOG2E,
            HEAD_DIM=d, BLOCK_M=config.block_m, BLOCK_N=config.block_n, MASK_MODE=mask_mode,
            HAS_RPB=rpb is not None, HAS_PERM=rows is not None, SPLIT_P=o.dtype == torch.float32 != q.dtype,
            HAS_O2=cast, EXACT=exact,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    return o, lse, out
