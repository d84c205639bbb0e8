"""Pattern builders: each attention pattern -> block tables + per-token metadata for the block-sparse core.

Design note
-----------
The Triton core (``block_sparse_fwd.py`` / ``block_sparse_bwd.py``) runs attention over a 1D sequence of N tokens
cut into query blocks of ``block_m`` and key blocks of ``block_n`` tokens. A :class:`BlockPattern` tells it

- which key blocks each query block visits: ``kv_num (Bt, n_qb)`` and ``kv_idx (Bt, n_qb, max_kv)`` (FlexAttention's
  ``BlockMask`` layout), and the transposed lists for the dK/dV pass: ``q_num (Bt, n_kb)``, ``q_idx (Bt, n_kb,
  max_q)``. ``Bt`` is 1 (table shared by the batch) or B (routing). Heads always share the table. Every entry is
  encoded ``block * 2 + partial``: ``partial == 0`` means every (query, key) pair of the two blocks is allowed and
  the kernel skips the element mask; ``partial == 1`` means the kernel evaluates the element mask (and the
  ``key < N`` bound). Entries past ``kv_num`` are unspecified and never read.
- how to evaluate the element mask of a partial block (``mask_mode``, a kernel constexpr, one compiled kernel each):

  ========================  ==================================================================================
  ``MASK_NONE`` (0)         only ``key < N``
  ``MASK_INTERVAL`` (1)     ``qwin[i, 0] <= j <= qwin[i, 1]`` (sequence positions): Hilbert windows (+ shift),
                            bands, clamped 1D neighbourhoods
  ``MASK_GRID2D`` (2)       ``tok[i, 2] == tok[j, 2]`` (same dilation sub-grid) and the key's sub-grid coords
                            ``(tok[j, 0], tok[j, 1])`` inside the query's rectangle
                            ``qwin[i] = (ylo, yhi, xlo, xhi)``: exact 2D neighbourhoods with dilation
  ``MASK_ROUTE`` (3)        bit ``tok[j, 2]`` of row ``tok[i, 2]`` of ``route[b]`` (region ranks): bi-level routing
  ========================  ==================================================================================

- optional relative position bias: ``tok[:, 0:2]`` are the tokens' (y, x) in the units the bias is indexed in
  (sub-grid units for dilated NA); the bias of a pair is ``rpb[h, clamp(dy) + r - 1, clamp(dx) + r - 1]`` with
  ``(dy, dx) = key - query`` clamped to ``[-(r-1), r-1]``, ``r = (rpb.shape[-1] + 1) // 2``.
- a token permutation for 2D patterns: ``perm (N,)`` are the row-major pixel indices in sequence order
  (``x_seq = x_flat[..., perm, :]``) and ``inv_perm`` undoes it.

Static patterns (windows, bands, 1D/2D neighbourhoods) are built once per (pattern, params, size, blocks, device)
and cached (``functools.lru_cache``; the tables sync with the host once, at build time). Their public getters are
``torch.compiler.assume_constant_result``: under ``torch.compile`` Dynamo calls them once while tracing (their
arguments are sizes and constants) and the compiled graph takes the cached tables as inputs, instead of tracing the
builders (whose host syncs would break the graph). They return a :class:`BlockPattern`, not a bare tensor: Dynamo
names a constant tensor after its function, so a second call at another size would get a symbolic size. Routing
tables are built on the GPU from the run-time top-k without a host sync (``sparse_ops.routing.routing_pattern``), on
top of a cached static ``routing.routing_layout``: the routing module owns them with the rest of the routing.

Every builder runs on the pattern's device (one host sync per table, for its width). Interval patterns (windows,
bands, 1D neighbourhoods) write their tables directly: each query block visits one run of consecutive key blocks
and each key block one run of query blocks (:func:`_interval_tables`, O(blocks x list length)). 2D neighbourhoods
count the allowed pairs of every block pair into a block state matrix ``(Bt, n_qb, n_kb)`` int8 (0 skip, 1 partial,
2 full), which :func:`tables_from_state` compacts both ways (routing too: ``routing.py``), so their memory is
O(n_qb * n_kb) at build time.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .hilbert import hilbert_coords

__all__ = [
    'MASK_NONE', 'MASK_INTERVAL', 'MASK_GRID2D', 'MASK_ROUTE', 'BlockPattern', 'route_bits', 'tables_from_state',
    'hilbert_window_pattern', 'hilbert_slide_pattern', 'hilbert_na1d_pattern', 'na2d_pattern',
    'hilbert_token_coords', 'window_intervals',
    'slide_intervals', 'na1d_intervals', 'na2d_order',
]

MASK_NONE, MASK_INTERVAL, MASK_GRID2D, MASK_ROUTE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPattern:
    """Everything the block-sparse core needs to know about one pattern at one size (see the module note).

    Shapes: ``kv_num (Bt, n_qb)``, ``kv_idx (Bt, n_qb, max_kv)``, ``q_num (Bt, n_kb)``, ``q_idx (Bt, n_kb, max_q)``
    (all int32, entries ``block * 2 + partial``); ``qwin (N, 4)`` int32 or None; ``tok (N, 4)`` int32
    ``(y, x, group, 0)`` or None; ``route (B, G, ceil(G / 32))`` int32 bit rows (:func:`route_bits`) or None;
    ``perm``/``inv_perm (N,)`` int64 or None; ``rows (N,)`` int32 = ``perm`` for the kernels, which then read
    row-major inputs in place.
    """
    n: int
    block_m: int
    block_n: int
    mask_mode: int
    kv_num: torch.Tensor
    kv_idx: torch.Tensor
    q_num: torch.Tensor
    q_idx: torch.Tensor
    qwin: Optional[torch.Tensor] = None
    tok: Optional[torch.Tensor] = None
    route: Optional[torch.Tensor] = None
    n_groups: int = 0
    perm: Optional[torch.Tensor] = None
    inv_perm: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None

    @property
    def n_qblocks(self) -> int:
        return self.kv_num.shape[-1]

    @property
    def n_kblocks(self) -> int:
        return self.q_num.shape[-1]

    def with_tok(self, tok: Optional[torch.Tensor]) -> 'BlockPattern':
        return dataclasses.replace(self, tok=tok)

    def density(self) -> float:
        """Fraction of (query block, key block) pairs visited (host sync; for reports only)."""
        return float(self.kv_num.float().sum()) / (self.kv_num.shape[0] * self.n_qblocks * self.n_kblocks)


# ----------------------------------------------------------------------------------------------------------------
# block state -> tables
# ----------------------------------------------------------------------------------------------------------------
def _compact(state: torch.Tensor, width: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """state (Bt, R, C) int8 -> num (Bt, R) int32, idx (Bt, R, width) int32 with entries col*2 + (state == 1), in
    ascending column order. A cumsum + scatter (no sort, no host sync when ``width`` is given)."""
    nz = state > 0
    num = nz.sum(-1, dtype=torch.int32)
    if width is None:  # static patterns: one host sync at build time
        width = int(num.max()) if num.numel() else 1
    width = max(1, min(int(width), state.shape[-1]))
    pos = torch.cumsum(nz, -1, dtype=torch.int32) - 1
    pos = torch.where(nz, pos, width).clamp(max=width).to(torch.int64)      # zeros go to a dump slot
    cols = torch.arange(state.shape[-1], device=state.device, dtype=torch.int32)
    enc = (cols * 2 + (state == 1).to(torch.int32)).expand_as(pos)
    out = torch.zeros(state.shape[:-1] + (width + 1,), device=state.device, dtype=torch.int32)
    out.scatter_(-1, pos, enc)
    return num, out[..., :width].contiguous()


@functools.lru_cache(maxsize=8)
def _bit_weights(device) -> torch.Tensor:
    """(32,) float64: bit j's value in an int32 word (bit 31 is the sign bit, -2^31)."""
    w = [float(2 ** j) for j in range(31)] + [-float(2 ** 31)]
    return torch.tensor(w, dtype=torch.float64, device=device)


def route_bits(route: torch.Tensor) -> torch.Tensor:
    """0/1 routes ``(B, G, G)`` (float) -> bit rows ``(B, G, ceil(G / 32))`` int32: bit ``c % 32`` of word ``c // 32``
    of row ``g`` is ``route[b, g, c]``. The kernels read a query group's words with 1D loads: a 2D gather from a dense
    ``(G, G)`` table made Triton compute the softmax a second time in another layout. Three kernels on a GPU (one
    more when G is not a multiple of 32); sums of distinct powers of two are exact in float64."""
    b, g, _ = route.shape
    words = -(-g // 32)
    x = route.to(torch.float64)
    if words * 32 != g:
        x = F.pad(x, (0, words * 32 - g))
    return (x.view(b, g, words, 32) @ _bit_weights(route.device)).to(torch.int32)


def tables_from_state(state: torch.Tensor, max_kv: Optional[int] = None, max_q: Optional[int] = None):
    """Compact a block state ``(Bt, n_qb, n_kb)`` int8 (0 skip / 1 partial / 2 full) into
    ``(kv_num, kv_idx, q_num, q_idx)``. Give ``max_kv``/``max_q`` to avoid a host sync (then they must be bounds)."""
    kv_num, kv_idx = _compact(state, max_kv)
    q_num, q_idx = _compact(state.transpose(1, 2), max_q)
    return kv_num, kv_idx, q_num, q_idx


def _n_blocks(n: int, b: int) -> int:
    return (n + b - 1) // b


def _block_rows(n: int, b: int, device) -> torch.Tensor:
    """Number of real tokens in each block of size b: (n_blocks,)."""
    starts = torch.arange(_n_blocks(n, b), device=device) * b
    return (n - starts).clamp(max=b)


def _range_tables(first: torch.Tensor, num: torch.Tensor, partial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of consecutive blocks ``first[r] .. first[r] + num[r] - 1`` of every row r -> num (1, R) int32 and idx
    (1, R, width) int32 (entries ``col * 2 + partial(row, col)``, 0 past num; width = the longest list, one host
    sync)."""
    width = max(1, int(num.max())) if num.numel() else 1
    t = torch.arange(width, device=num.device)
    rows = torch.arange(num.shape[0], device=num.device)[:, None]
    valid = t[None, :] < num[:, None]
    cols = torch.where(valid, first[:, None] + t[None, :], 0)
    idx = torch.where(valid, cols * 2 + partial(rows, cols).to(cols.dtype), 0)
    return num.to(torch.int32)[None], idx.to(torch.int32)[None].contiguous()


def _interval_tables(lo: torch.Tensor, hi: torch.Tensor, n: int, bm: int, bn: int):
    """``(kv_num, kv_idx, q_num, q_idx)`` for per-query key intervals ``[lo_i, hi_i]`` with ``lo`` and ``hi``
    non-decreasing in i (windows, bands and clamped 1D neighbourhoods). Then every query block visits one run of
    consecutive key blocks (those meeting ``[min lo, max hi]`` of the block) and every key block is visited by one
    run of consecutive query blocks, so the tables cost O(blocks x list length), not O(n_qb x n_kb). A pair is full
    (no element mask) when the key block lies inside every query's interval and is complete."""
    device = lo.device
    n_qb, n_kb = _n_blocks(n, bm), _n_blocks(n, bn)
    pad = n_qb * bm - n
    # padding rows copy the last real row so they do not change the block's min / max
    lo_p = torch.cat([lo, lo[-1:].expand(pad)]).view(n_qb, bm)
    hi_p = torch.cat([hi, hi[-1:].expand(pad)]).view(n_qb, bm)
    min_lo, max_lo = lo_p.min(1).values, lo_p.max(1).values
    min_hi, max_hi = hi_p.min(1).values, hi_p.max(1).values
    ks = torch.arange(n_kb, device=device) * bn                 # key block start
    ke = torch.clamp(ks + bn, max=n) - 1                         # last real key of the block

    def partial(qb, kb):
        return ~((ks[kb] >= max_lo[qb]) & (ke[kb] <= min_hi[qb]) & (ks[kb] + bn <= n))
    kv_first = min_lo // bn
    kv = _range_tables(kv_first, max_hi // bn - kv_first + 1, partial)
    # key block kb: query blocks with max_hi >= its start (a suffix) and min_lo <= its last key (a prefix)
    q_first = torch.searchsorted(max_hi.contiguous(), ks, side='left')
    q_end = torch.searchsorted(min_lo.contiguous(), ke, side='right')
    q = _range_tables(q_first, (q_end - q_first).clamp(min=0), lambda kb, qb: partial(qb, kb))
    return (*kv, *q)


# ----------------------------------------------------------------------------------------------------------------
# 1D patterns on the Hilbert sequence
# ----------------------------------------------------------------------------------------------------------------
def window_intervals(n: int, window: int, shift: bool, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks of ``window`` tokens; with ``shift`` boundaries at ``window - window//2 + m*window`` (first chunk
    ``ceil(window/2)`` tokens, as the official HWT's roll by ``+window//2``). -> lo, hi (N,) int64."""
    i = torch.arange(n, device=device)
    off = window // 2 if shift else 0
    c = (i + off) // window
    lo = (c * window - off).clamp(min=0)
    hi = ((c + 1) * window - off).clamp(max=n) - 1
    return lo, hi


def slide_intervals(n: int, window: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Band ``|i - j| <= window // 2`` -> lo, hi (N,) int64."""
    i = torch.arange(n, device=device)
    r = window // 2
    return (i - r).clamp(min=0), (i + r).clamp(max=n - 1)


def na1d_intervals(n: int, kernel: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamped-centre 1D neighbourhood of exactly ``min(kernel, n)`` tokens -> lo, hi (N,) int64."""
    i = torch.arange(n, device=device)
    k = min(kernel, n)
    lo = (i - kernel // 2).clamp(min=0).clamp(max=n - k)
    return lo, lo + k - 1


def _interval_pattern(lo, hi, n, bm, bn) -> BlockPattern:
    tables = _interval_tables(lo, hi, n, bm, bn)
    qwin = torch.stack([lo, hi, lo, hi], 1).to(torch.int32).contiguous()
    return BlockPattern(n, bm, bn, MASK_INTERVAL, *tables, qwin=qwin)


def _dev(device) -> torch.device:
    device = torch.device(device if device is not None else 'cpu')
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return device


@functools.lru_cache(maxsize=256)
def _hilbert_window_pattern(n, window, shift, bm, bn, device):
    return _interval_pattern(*window_intervals(n, window, shift, device), n, bm, bn)


@functools.lru_cache(maxsize=256)
def _hilbert_slide_pattern(n, window, bm, bn, device):
    return _interval_pattern(*slide_intervals(n, window, device), n, bm, bn)


@functools.lru_cache(maxsize=256)
def _hilbert_na1d_pattern(n, kernel, bm, bn, device):
    return _interval_pattern(*na1d_intervals(n, kernel, device), n, bm, bn)


@torch.compiler.assume_constant_result
def hilbert_window_pattern(n: int, window: int, shift: bool, block_m: int, block_n: int, device=None,
                           hw: Optional[tuple[int, int]] = None) -> BlockPattern:
    """Hilbert window attention over N tokens (cached). ``hw`` adds the tokens' (y, x) for a position bias."""
    p = _hilbert_window_pattern(int(n), int(window), bool(shift), int(block_m), int(block_n), _dev(device))
    return p.with_tok(hilbert_token_coords(*hw, device=device)) if hw is not None else p


@torch.compiler.assume_constant_result
def hilbert_slide_pattern(n: int, window: int, block_m: int, block_n: int, device=None,
                          hw: Optional[tuple[int, int]] = None) -> BlockPattern:
    """Hilbert band ``|i - j| <= window // 2`` (cached)."""
    p = _hilbert_slide_pattern(int(n), int(window), int(block_m), int(block_n), _dev(device))
    return p.with_tok(hilbert_token_coords(*hw, device=device)) if hw is not None else p


@torch.compiler.assume_constant_result
def hilbert_na1d_pattern(n: int, kernel: int, block_m: int, block_n: int, device=None,
                         hw: Optional[tuple[int, int]] = None) -> BlockPattern:
    """Clamped 1D neighbourhood attention on the Hilbert sequence (cached)."""
    p = _hilbert_na1d_pattern(int(n), int(kernel), int(block_m), int(block_n), _dev(device))
    return p.with_tok(hilbert_token_coords(*hw, device=device)) if hw is not None else p


@functools.lru_cache(maxsize=256)
def _hilbert_token_coords(h, w, device):
    yx = hilbert_coords(h, w).to(torch.int32)
    tok = torch.cat([yx, torch.zeros(h * w, 2, dtype=torch.int32)], 1)
    return tok.contiguous().to(device)


def hilbert_token_coords(h: int, w: int, device=None) -> torch.Tensor:
    """``tok (h*w, 4)`` int32 = (y, x, 0, 0) of each Hilbert-sequence position (cached)."""
    return _hilbert_token_coords(int(h), int(w), _dev(device))


# ----------------------------------------------------------------------------------------------------------------
# exact 2D neighbourhood attention (NATTEN semantics, dilation) in sub-grid-major Hilbert order
# ----------------------------------------------------------------------------------------------------------------
def _axis_window(s: torch.Tensor, size: torch.Tensor, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamped window along one axis: sub-grid coordinate s, sub-grid side size -> (lo, hi) inclusive."""
    k = torch.clamp(size, max=kernel)
    lo = torch.minimum((s - kernel // 2).clamp(min=0), size - k)
    return lo, lo + k - 1


@functools.lru_cache(maxsize=64)
def na2d_order(h: int, w: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence order used for dilated 2D NA (CPU, cached): the d*d sub-grids one after another (row-major over
    (y % d, x % d)), each in its own Hilbert order. Returns ``perm (N,)`` (row-major pixel of each position) and
    ``tok (N, 4)`` int32 = (y // d, x // d, sub-grid id, 0)."""
    d = dilation
    perms, toks = [], []
    for gy in range(min(d, h)):
        for gx in range(min(d, w)):
            hs, ws = (h - gy + d - 1) // d, (w - gx + d - 1) // d
            yx = hilbert_coords(hs, ws)
            y, x = yx[:, 0] * d + gy, yx[:, 1] * d + gx
            perms.append(y * w + x)
            g = torch.full_like(y, gy * d + gx)
            toks.append(torch.stack([yx[:, 0], yx[:, 1], g, torch.zeros_like(g)], 1))
    return torch.cat(perms), torch.cat(toks).to(torch.int32)


_PAIR_CHUNK = 1 << 20
"""(query, key) pairs per pass of the 2D NA block-pair count (bounds the builder's temporaries)."""


def _na2d_block_pairs(inv, gy, gx, ylo, yhi, xlo, xhi, w, d, kernel, bm, bn) -> tuple[torch.Tensor, torch.Tensor]:
    """The visited block pairs of the 2D neighbourhood, sparse: ``key (P,)`` int64 = ``qb * n_kb + kb`` ascending
    and ``count (P,)`` int64, the allowed (query, key) pairs in each (every query's clamped ``kernel x kernel``
    window: ``N * kernel^2`` pairs, counted in passes of at most ``_PAIR_CHUNK``). Memory follows the visited pairs,
    not ``n_qb * n_kb``. Runs on the tensors' device (``torch.unique``: a host sync per pass)."""
    device, n = inv.device, inv.numel()
    n_kb = _n_blocks(n, bn)
    ar = torch.arange(kernel, device=device)
    keys, counts = [], []
    step = max(1, _PAIR_CHUNK // (kernel * kernel))
    for s0 in range(0, n, step):
        sl = slice(s0, min(n, s0 + step))
        ky = ylo[sl, None] + ar[None, :]                          # (n_chunk, k) sub-grid rows
        kx = xlo[sl, None] + ar[None, :]
        ok = (ky <= yhi[sl, None])[:, :, None] & (kx <= xhi[sl, None])[:, None, :]
        pix = (ky * d + gy[sl, None])[:, :, None] * w + (kx * d + gx[sl, None])[:, None, :]
        j = inv[pix.clamp(max=n - 1)]                             # sequence position of each key
        i = torch.arange(sl.start, sl.stop, device=device)[:, None, None]
        key, count = torch.unique(((i // bm) * n_kb + j // bn)[ok], return_counts=True)
        keys.append(key)
        counts.append(count)
    key, where = torch.unique(torch.cat(keys), return_inverse=True)
    return key, torch.zeros_like(key).index_add_(0, where, torch.cat(counts))


def _lists(row: torch.Tensor, enc: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries ``enc (P,)`` of rows ``row (P,)`` (ascending; within a row in list order) -> num (1, n_rows) int32,
    idx (1, n_rows, width) int32, zero past num (width = the longest list, at least 1; one host sync)."""
    num = torch.bincount(row, minlength=n_rows)
    width = max(1, int(num.max())) if row.numel() else 1
    pos = torch.arange(row.numel(), device=row.device) - (torch.cumsum(num, 0) - num)[row]
    idx = torch.zeros((n_rows, width), device=row.device, dtype=torch.int32)
    idx[row, pos] = enc.to(torch.int32)
    return num.to(torch.int32)[None], idx[None]


def _tables_from_pairs(key, count, n, bm, bn):
    """``(kv_num, kv_idx, q_num, q_idx)`` of sparse block pairs (:func:`_na2d_block_pairs`): the tables that
    :func:`tables_from_state` gives for the dense state (full where the count is the blocks' product and the key
    block is complete, else partial)."""
    n_qb, n_kb = _n_blocks(n, bm), _n_blocks(n, bn)
    qb, kb = key // n_kb, key % n_kb
    rows, cols = _block_rows(n, bm, key.device), _block_rows(n, bn, key.device)
    partial = ((count != rows[qb] * cols[kb]) | (cols[kb] != bn)).to(torch.int64)
    kv_num, kv_idx = _lists(qb, kb * 2 + partial, n_qb)
    order = torch.argsort(kb * n_qb + qb)
    q_num, q_idx = _lists(kb[order], (qb * 2 + partial)[order], n_kb)
    return kv_num, kv_idx, q_num, q_idx


@functools.lru_cache(maxsize=128)
def _na2d_pattern(h, w, kernel, dilation, bm, bn, device):
    """Built on ``device`` (the order comes from the CPU cache of :func:`na2d_order`): on a GPU a new input size
    costs a few dozen launches and a host sync per pass, not a host pass over the ``N * kernel^2`` pairs; the block
    pairs are kept sparse (no dense ``n_qb x n_kb`` count)."""
    d, n = dilation, h * w
    perm, tok = (t.to(device) for t in na2d_order(h, w, d))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n, device=device)
    y, x = perm // w, perm % w
    gy, gx = y % d, x % d
    hs, ws = (h - gy + d - 1) // d, (w - gx + d - 1) // d       # side of each token's sub-grid
    ylo, yhi = _axis_window(y // d, hs, kernel)
    xlo, xhi = _axis_window(x // d, ws, kernel)
    qwin = torch.stack([ylo, yhi, xlo, xhi], 1).to(torch.int32)
    tables = _tables_from_pairs(*_na2d_block_pairs(inv, gy, gx, ylo, yhi, xlo, xhi, w, d, kernel, bm, bn), n, bm, bn)
    return BlockPattern(n, bm, bn, MASK_GRID2D, *tables, qwin=qwin.contiguous(), tok=tok.contiguous(), perm=perm,
                        inv_perm=inv, rows=perm.to(torch.int32))


@torch.compiler.assume_constant_result
def na2d_pattern(h: int, w: int, kernel_size: int, dilation: int, block_m: int, block_n: int,
                 device=None) -> BlockPattern:
    """Exact 2D neighbourhood attention (NATTEN semantics incl. dilation, any h, w >= 1), cached.

    Tokens are permuted to :func:`na2d_order` (``perm``/``inv_perm``); ``tok[:, :2]`` are sub-grid coordinates, so a
    ``(heads, 2k-1, 2k-1)`` bias is indexed in sub-grid units.
    """
    return _na2d_pattern(int(h), int(w), int(kernel_size), int(dilation), int(block_m), int(block_n),
                         _dev(device))
