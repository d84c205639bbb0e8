"""The two-launch Triton routing (``sparse_ops.routing_triton``) returns the same key regions, in the same order,
as the PyTorch ``routing.route_regions`` of the split heads and builds the same route matrix as
``routing.routing_pattern``'s ``scatter_`` and the same bit rows as ``patterns.route_bits``, on ``DEV`` (CPU: under
``TRITON_INTERPRET=1``, set by conftest; the GPU box: compiled). Random normal data; exact ties:
tests/sparse_ops/test_routing.py."""
from __future__ import annotations

import pytest
import torch

from sparse_ops import patterns, routing
from sparse_ops.routing_triton import region_means_triton, route_topk_triton

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture(autouse=True)
def _tensors_on_dev():
    """Every tensor a test makes lands on DEV."""
    previous = torch.get_default_device()
    torch.set_default_device(DEV)
    yield
    torch.set_default_device(previous)


# (B, H, W, C, n_win, topk)
SHAPES = [
    (2, 8, 8, 8, 2, 2),         # aligned, 16-token regions
    (2, 5, 7, 8, 4, 3),         # ragged: row band 3 is empty (regions 12..15)
    (2, 5, 7, 8, 4, 16),        # topk = R > non-empty regions
    (2, 5, 7, 8, 4, 14),        # topk between the non-empty count (12) and R
    (3, 9, 11, 12, 3, 1),       # ragged, no empty region, topk = 1
    (1, 1, 1, 4, 2, 1),         # one token: regions 1..3 empty
    (2, 20, 20, 40, 2, 3),      # 100-token regions (several token chunks), 2C = 80 (two channel chunks)
    (1, 20, 20, 40, 16, 5),     # R = 256: the route kernel loops over channel chunks; 6 empty bands per axis
    (2, 3, 5, 4, 1, 1),         # n_win = 1: one region
    (1, 20, 20, 4, 20, 2),      # G = 400 one-token regions: 13 words per bit row, written 8 at a time
]


def _layout(h, w, n_win):
    return routing.routing_layout(h, w, n_win, 64, 64, DEV)


def _torch_route(qkv, n_win, topk):
    """(topk_idx, route) of the PyTorch path: route_regions of the split heads, then routing_pattern's scatter_."""
    b, h, w, c3 = qkv.shape
    q, k = (qkv[..., i * c3 // 3:(i + 1) * c3 // 3].unflatten(-1, (1, -1)).permute(0, 3, 1, 2, 4) for i in (0, 1))
    idx = routing.route_regions(q, k, n_win, topk)
    return idx, torch.zeros(b, n_win ** 2, n_win ** 2).scatter_(2, idx, 1.0)


def _check_against_torch(qkv, n_win, topk):
    """Equal indices (same order) and route rows on every query region, empty ones (all affinities tie at 0)
    included, and bit rows equal to ``patterns.route_bits`` of the routes among the non-empty regions. Returns the
    Triton (topk_idx, route)."""
    b, h, w, _ = qkv.shape
    r = n_win * n_win
    idx, route, bits = route_topk_triton(qkv, n_win, topk)
    want_idx, want_route = _torch_route(qkv, n_win, topk)
    assert idx.dtype == torch.int64 and idx.shape == (b, r, topk)
    assert route.dtype == torch.float32 and route.shape == (b, r, r)
    assert torch.equal(route, torch.zeros(b, r, r).scatter_(2, idx, 1.0))      # route is the scatter of idx
    assert torch.equal(route.sum(-1), torch.full((b, r), float(topk)))           # so the indices are distinct
    counts = _layout(h, w, n_win).counts
    full = counts > 0
    n_full = int(full.sum())
    if topk <= n_full:      # only non-empty key regions
        assert not route[:, :, ~full].any()
    else:                   # every non-empty key region, then empty ones
        assert route[:, :, full].all()
    assert torch.equal(idx, want_idx) and torch.equal(route, want_route)
    g = n_full
    assert bits.dtype == torch.int32 and bits.shape == (b, g, -(-g // 32))
    assert torch.equal(bits, patterns.route_bits(route[:, full][:, :, full])), 'bit rows differ from route_bits'
    return idx, route


@pytest.mark.parametrize('b, h, w, c, n_win, topk', SHAPES)
def test_sets_and_route_equal_torch(b, h, w, c, n_win, topk):
    torch.manual_seed(h * 100 + w * 10 + n_win)
    _check_against_torch(torch.randn(b, h, w, 3 * c), n_win, topk)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('b, h, w, c, n_win, topk', [SHAPES[1], SHAPES[4], SHAPES[6]])
def test_half_sets_equal_torch(b, h, w, c, n_win, topk, dtype):
    """fp16 / bf16 input, fp32 means and affinity on both paths (no tl.dot: bf16 runs in the interpreter)."""
    torch.manual_seed(h + w)
    _check_against_torch(torch.randn(b, h, w, 3 * c).to(dtype), n_win, topk)


@pytest.mark.parametrize('b, h, w, c, n_win, topk', SHAPES)
def test_region_means_equal_torch(b, h, w, c, n_win, topk):
    """Kernel 1 against ``routing.region_means`` (fp32 summation order differs: tolerance)."""
    torch.manual_seed(h + w + c)
    qkv = torch.randn(b, h, w, 3 * c)
    counts = _layout(h, w, n_win).counts
    want = routing.region_means(qkv[..., :2 * c], n_win)
    got = region_means_triton(qkv, n_win)
    assert got.dtype == torch.float32 and got.shape == (b, n_win * n_win, 2 * c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not got[:, counts == 0].any()                                          # empty regions: mean 0


def test_strided_input():
    """qkv as a non-contiguous view (channels last of a permuted tensor, every other column): read in place."""
    torch.manual_seed(1)
    base = torch.randn(2, 3 * 8, 7, 14).permute(0, 2, 3, 1)[:, :, ::2]          # (2, 7, 7, 24)
    assert not base.is_contiguous()
    idx, route = _check_against_torch(base, 3, 4)
    want_idx, want_route, _ = route_topk_triton(base.contiguous(), 3, 4)
    assert torch.equal(idx.sort(-1).values, want_idx.sort(-1).values) and torch.equal(route, want_route)


def test_empty_key_regions_are_masked():
    """Every real affinity is negative (q means > 0, k means < 0), so an unmasked empty key region (score 0) would
    win every row."""
    torch.manual_seed(2)
    b, h, w, c, n_win, topk = 2, 5, 7, 8, 4, 3
    q = torch.rand(b, h, w, c) + 0.5
    k = -(torch.rand(b, h, w, c) + 0.5)
    qkv = torch.cat([q, k, torch.randn(b, h, w, c)], -1)
    idx, route = _check_against_torch(qkv, n_win, topk)
    empty = _layout(h, w, n_win).counts == 0
    assert empty.any() and not empty[idx].any()
    assert not route[:, :, empty].any()


def test_ties_pick_lowest_indices():
    """Documented tie rule: all-equal affinities (empty query regions, or constant data) pick the lowest indices."""
    qkv = torch.ones(1, 4, 4, 3 * 4)
    idx, route, _ = route_topk_triton(qkv, 2, 2)
    assert torch.equal(idx.sort(-1).values, torch.tensor([[0, 1]] * 4)[None])
    idx = route_topk_triton(torch.randn(1, 1, 1, 12), 2, 3)[0]      # regions 1..3 empty: region 0, then 1, 2
    assert torch.equal(idx.sort(-1).values, torch.tensor([[0, 1, 2]] * 4)[None])


@pytest.mark.slow
def test_large_region_count():
    """R = 33**2 = 1089 > 1024 (BLOCK_R = 2048, two-channel chunks in the route kernel), one token per region
    (~12 s in the interpreter)."""
    torch.manual_seed(3)
    _check_against_torch(torch.randn(1, 33, 33, 3 * 4), 33, 2)


@pytest.mark.parametrize('shape, n_win, topk, match', [
    ((2, 5, 7), 2, 1, 'qkv must be'),               # 3-d
    ((2, 5, 7, 10), 2, 1, 'qkv must be'),           # 3C not divisible by 3
    ((2, 0, 7, 12), 2, 1, 'qkv must be'),           # empty map
    ((2, 5, 7, 12), 0, 1, 'n_win must be'),
    ((2, 5, 7, 12), 2.0, 1, 'n_win must be'),
    ((2, 5, 7, 12), 2, 0, 'topk must be'),
    ((2, 5, 7, 12), 2, 5, 'topk must be'),          # > R = 4
])
def test_bad_arguments_raise(shape, n_win, topk, match):
    with pytest.raises(ValueError, match=match):
        route_topk_triton(torch.zeros(shape), n_win, topk)
