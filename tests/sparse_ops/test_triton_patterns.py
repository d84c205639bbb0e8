"""Pattern builders (sparse_ops.patterns): the block tables must list exactly the block pairs that hold an allowed
(query, key) pair, flag exactly the fully-allowed ones as full, agree with their transpose, and be cached.

The allowed pairs are computed here from first principles (dense masks from the twins' own range / neighbour
helpers and the routing twin's top-k), independently of the builders' block logic. CPU only, no Triton needed.
"""
from __future__ import annotations

import pytest
import torch

from sparse_ops import patterns, routing
from sparse_ops.reference import axis_neighbors, band_ranges, neighborhood_1d_ranges, route_regions, window_ranges


def _decode(num, idx, n_rows, n_cols):
    """Tables -> dense state (Bt, rows, cols): 0 skip, 1 partial, 2 full; asserts no duplicates."""
    bt = num.shape[0]
    state = torch.zeros(bt, n_rows, n_cols, dtype=torch.int8)
    for b in range(bt):
        for r in range(n_rows):
            ents = idx[b, r, :num[b, r]].tolist()
            cols = [e // 2 for e in ents]
            assert len(set(cols)) == len(cols), f'duplicate block in row {r}: {cols}'
            assert cols == sorted(cols), 'blocks must be listed in ascending order'
            for e in ents:
                state[b, r, e // 2] = 2 - (e % 2)
    return state


def _expected_state(allowed, bm, bn):
    """Dense allowed (Bt, N, N) bool -> expected block state."""
    bt, n, _ = allowed.shape
    n_qb, n_kb = -(-n // bm), -(-n // bn)
    pad = torch.zeros(bt, n_qb * bm, n_kb * bn, dtype=torch.bool)
    pad[:, :n, :n] = allowed
    blocks = pad.view(bt, n_qb, bm, n_kb, bn)
    any_ = blocks.any(4).any(2)
    real = torch.zeros(n_qb * bm, n_kb * bn, dtype=torch.bool)
    real[:n, :n] = True
    real_rows = real.view(n_qb, bm, n_kb, bn)[:, :, 0, 0]           # (n_qb, bm) real query rows
    key_full = torch.arange(n_kb) * bn + bn <= n                     # key block without padding
    # full: every real query row allows every key of the (padding-free) key block
    full = (blocks | ~real_rows[None, :, :, None, None]).all(4).all(2) & key_full[None, None, :]
    return any_.to(torch.int8) + (any_ & full).to(torch.int8)


def _check(p, allowed):
    exp = _expected_state(allowed, p.block_m, p.block_n)
    got = _decode(p.kv_num.cpu(), p.kv_idx.cpu(), p.n_qblocks, p.n_kblocks)
    got_t = _decode(p.q_num.cpu(), p.q_idx.cpu(), p.n_kblocks, p.n_qblocks)
    assert torch.equal(got, exp.expand_as(got)), 'forward table differs from the allowed block pairs'
    assert torch.equal(got_t, got.transpose(1, 2)), 'transposed table is not the transpose'


def _range_mask(lo, hi, n):
    j = torch.arange(n)
    return ((j[None, :] >= lo[:, None]) & (j[None, :] <= hi[:, None]))[None]


BLOCKS = [(16, 16), (16, 32), (32, 16), (64, 64)]


@pytest.mark.parametrize('bm,bn', BLOCKS, ids=lambda v: str(v))
@pytest.mark.parametrize('n,window,shift', [(1, 4, False), (100, 7, False), (100, 49, True), (257, 64, True),
                                            (64, 64, False)])
def test_window_tables(n, window, shift, bm, bn):
    p = patterns.hilbert_window_pattern(n, window, shift, bm, bn)
    _check(p, _range_mask(*window_ranges(n, window, shift), n))
    lo, hi = window_ranges(n, window, shift)
    assert torch.equal(p.qwin[:, 0].long(), lo) and torch.equal(p.qwin[:, 1].long(), hi)


@pytest.mark.parametrize('bm,bn', BLOCKS, ids=lambda v: str(v))
@pytest.mark.parametrize('n,size', [(1, 49), (50, 49), (300, 49), (97, 4)])
def test_band_and_na1d_tables(n, size, bm, bn):
    _check(patterns.hilbert_slide_pattern(n, size, bm, bn), _range_mask(*band_ranges(n, size), n))
    _check(patterns.hilbert_na1d_pattern(n, size, bm, bn), _range_mask(*neighborhood_1d_ranges(n, size), n))


def _na2d_allowed(h, w, k, d, perm):
    """Dense mask in sequence order from the twin's per-axis neighbourhoods."""
    ylo, ysz = axis_neighbors(h, k, d)
    xlo, xsz = axis_neighbors(w, k, d)
    y, x = torch.arange(h * w) // w, torch.arange(h * w) % w
    ys, xs = y // d, x // d
    same = (y[:, None] % d == y[None, :] % d) & (x[:, None] % d == x[None, :] % d)
    iny = (ys[None, :] >= ylo[y][:, None]) & (ys[None, :] < (ylo + ysz)[y][:, None])
    inx = (xs[None, :] >= xlo[x][:, None]) & (xs[None, :] < (xlo + xsz)[x][:, None])
    allowed_rm = same & iny & inx
    return allowed_rm[perm][:, perm][None]


@pytest.mark.parametrize('bm,bn', [(16, 16), (32, 16), (64, 64)], ids=lambda v: str(v))
@pytest.mark.parametrize('h,w,k,d', [(1, 1, 3, 1), (1, 17, 5, 2), (13, 7, 7, 1), (13, 7, 3, 3), (31, 45, 7, 4),
                                     (24, 24, 7, 1)])
def test_na2d_tables(h, w, k, d, bm, bn):
    p = patterns.na2d_pattern(h, w, k, d, bm, bn)
    assert torch.equal(torch.sort(p.perm).values, torch.arange(h * w)), 'perm is not a permutation'
    assert torch.equal(p.perm[p.inv_perm], torch.arange(h * w))
    allowed = _na2d_allowed(h, w, k, d, p.perm)
    assert bool((allowed.sum(-1) == allowed.sum(-1)[0, 0]).all()) or k * d > min(h, w)
    _check(p, allowed)


@pytest.mark.parametrize('bm,bn', [(16, 16), (32, 16), (64, 64)], ids=lambda v: str(v))
@pytest.mark.parametrize('h,w,n_win,topk', [(1, 1, 1, 1), (1, 17, 4, 3), (13, 7, 4, 1), (13, 7, 4, 16),
                                            (31, 45, 8, 4), (3, 5, 4, 16)])
def test_routing_tables(h, w, n_win, topk, bm, bn):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, h, w, 8, generator=g) for _ in range(2))
    layout = routing.routing_layout(h, w, n_win, bm, bn)
    idx = route_regions(q, k, n_win, topk)
    p = routing.routing_pattern(layout, idx)
    # allowed from the twin's routing in row-major terms, then permuted to region order
    ry, rx = -(-h // n_win), -(-w // n_win)
    y, x = torch.arange(h * w) // w, torch.arange(h * w) % w
    reg = (y // ry) * n_win + x // rx
    routed = torch.zeros(2, n_win ** 2, n_win ** 2, dtype=torch.bool)
    routed.scatter_(2, idx, True)
    allowed = routed[:, reg][:, :, reg][:, layout.perm][:, :, layout.perm]
    _check(p, allowed)
    ranked = layout.ranked                                        # the non-empty regions: the kernels' groups
    g = torch.arange(ranked.numel())
    bits = (p.route[:, :, g // 32] >> (g % 32)) & 1 == 1                  # (B, G, G) unpacked
    assert p.n_groups == ranked.numel() and torch.equal(bits, routed[:, ranked][:, :, ranked])
    assert torch.equal(ranked[p.tok[:, 2].long()], layout.region), 'tok[:, 2] is not the rank of the region'
    assert p.kv_idx.shape[-1] >= int(p.kv_num.max()), 'static max_kv bound is too small'


def test_builders_are_cached():
    a = patterns.hilbert_window_pattern(100, 7, True, 16, 16)
    assert a is patterns.hilbert_window_pattern(100, 7, True, 16, 16)
    assert a is not patterns.hilbert_window_pattern(100, 7, False, 16, 16)
    assert patterns.na2d_pattern(9, 9, 3, 2, 16, 16) is patterns.na2d_pattern(9, 9, 3, 2, 16, 16)
    assert routing.routing_layout(9, 9, 3, 16, 16) is routing.routing_layout(9, 9, 3, 16, 16)


def test_hw_adds_hilbert_coordinates():
    from sparse_ops import hilbert_coords
    p = patterns.hilbert_slide_pattern(35, 9, 16, 16, hw=(5, 7))
    assert torch.equal(p.tok[:, :2].long(), hilbert_coords(5, 7))
    assert patterns.hilbert_slide_pattern(35, 9, 16, 16).tok is None


def test_na2d_pairs_counted_in_passes_equal_one_pass(monkeypatch):
    """The pair count runs in passes of ``_PAIR_CHUNK`` pairs (bounded temporaries at large maps): many small
    passes give the tables of one pass."""
    patterns._na2d_pattern.cache_clear()
    one = patterns._na2d_pattern(23, 30, 5, 2, 16, 16, torch.device('cpu'))
    patterns._na2d_pattern.cache_clear()
    monkeypatch.setattr(patterns, '_PAIR_CHUNK', 7 * 25)  # 7 queries per pass
    many = patterns._na2d_pattern(23, 30, 5, 2, 16, 16, torch.device('cpu'))
    patterns._na2d_pattern.cache_clear()
    assert many is not one
    for name in ('kv_num', 'kv_idx', 'q_num', 'q_idx'):
        assert torch.equal(getattr(many, name), getattr(one, name)), name


@pytest.mark.parametrize('h,w,k,d,bm,bn', [(13, 7, 7, 1, 16, 16), (31, 45, 7, 4, 32, 16), (24, 40, 5, 2, 64, 32)])
def test_na2d_sparse_tables_equal_the_dense_compaction(h, w, k, d, bm, bn):
    """The 2D NA builder keeps block pairs sparse; its tables equal, entry for entry (widths and zero padding
    included), those that tables_from_state compacts from the oracle's dense block state."""
    p = patterns.na2d_pattern(h, w, k, d, bm, bn)
    dense = patterns.tables_from_state(_expected_state(_na2d_allowed(h, w, k, d, p.perm), bm, bn))
    for name, want in zip(('kv_num', 'kv_idx', 'q_num', 'q_idx'), dense):
        assert torch.equal(getattr(p, name), want), name


@pytest.mark.parametrize('g', [1, 31, 32, 33, 49, 256])
def test_route_bits_round_trip(g):
    """Bit rows hold every route, bit 31 (the int32 sign bit) and partial last words included."""
    route = (torch.rand(2, g, g, generator=torch.Generator().manual_seed(g)) < 0.4).float()
    route[0, 0, :] = 1.0                                          # a row with every bit set
    bits = patterns.route_bits(route)
    c = torch.arange(g)
    assert bits.dtype == torch.int32 and bits.shape == (2, g, -(-g // 32))
    assert torch.equal(((bits[:, :, c // 32] >> (c % 32)) & 1).float(), route)
