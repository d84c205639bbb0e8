"""``sparse_ops.routing``: one tie rule on every path.

The rule (``routing.select_regions``): key regions by affinity, highest first, equal affinities lowest region index
first, NaN above every number, empty regions (-inf) last. The oracle below applies it with exact arithmetic:
small-integer q / k with 4-token regions make every region mean a multiple of 1/4 and every affinity exact in
fp32, so exact ties are common and every path must break them the same way: the twin
(``routing.route_regions``), the Triton op's call with the cached layout, and the two Triton launches of
``routing.route_qkv`` (the packed op and the fused block; CPU: interpreter). The fused BiFormer block's ties are
in tests/backbones/test_biformer_fused.py.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from sparse_ops import routing

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'


def _oracle(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """The rule, one row at a time in Python: sort by (NaN first, -score, index)."""
    rows = scores.reshape(-1, scores.shape[-1]).tolist()
    out = [sorted(range(len(r)), key=lambda i: (r[i] == r[i], -r[i] if r[i] == r[i] else 0, i))[:topk] for r in rows]
    return torch.tensor(out, dtype=torch.int64).reshape(*scores.shape[:-1], topk)


def test_select_regions_is_the_rule():
    """Many exact ties (integer scores in [-2, 2]), -inf and NaN entries; every topk from 1 to R."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(-2, 3, (3, 40, 9), generator=g).float()
    scores[0, :, 4] = float('-inf')
    scores[1, ::3, 7] = float('nan')
    scores[1, ::5, 2] = float('nan')
    for topk in range(1, 10):
        assert torch.equal(routing.select_regions(scores.to(DEV), topk).cpu(), _oracle(scores, topk))


def _tied_qkv(b, n_win, c, seed):
    """qkv ``(B, 2*n_win, 2*n_win, 3C)`` of small integers (4-token regions) and its exact affinity ``(B, R, R)``
    (Fractions, as floats: exact), computed apart from sparse_ops."""
    g = torch.Generator().manual_seed(seed)
    side = 2 * n_win
    qkv = torch.randint(-1, 2, (b, side, side, 3 * c), generator=g).float()

    def key_region(r):  # the k channels of region r (2 x 2 tokens)
        y, x = (r // n_win) * 2, (r % n_win) * 2
        return qkv[:, y:y + 2, x:x + 2, c:2 * c]
    # two pairs of identical key regions on top of the accidental ties: regions 0 = 3 and 1 = R - 1
    key_region(3).copy_(key_region(0))
    key_region(n_win ** 2 - 1).copy_(key_region(1))
    regions = qkv[..., :2 * c].reshape(b, n_win, 2, n_win, 2, 2 * c).transpose(2, 3).reshape(b, n_win ** 2, 4, 2 * c)
    sums = regions.sum(2).to(torch.int64).tolist()                       # exact integer sums
    aff = [[[float(sum(Fraction(qs[i], 4) * Fraction(ks[c + i], 4) for i in range(c))) for ks in batch]
            for qs in batch] for batch in sums]
    return qkv, torch.tensor(aff)


def _heads(qkv, i, heads):
    """q (i=0) or k (i=1) of ``qkv`` as ``(B, heads, H, W, D)`` (head-major channels)."""
    c = qkv.shape[-1] // 3
    return qkv[..., i * c:(i + 1) * c].unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)


@pytest.mark.parametrize('n_win, topk', [(3, 1), (3, 4), (4, 7), (4, 16)])
def test_every_path_breaks_ties_by_the_rule(n_win, topk):
    qkv, aff = _tied_qkv(2, n_win, 8, seed=n_win * 10 + topk)
    want = _oracle(aff, topk)
    assert (aff[..., :, None] == aff[..., None, :]).sum() > aff.numel(), 'the data must hold exact ties'
    assert torch.equal(aff[:, :, 0], aff[:, :, 3]) and torch.equal(aff[:, :, 1], aff[:, :, -1])
    qkv = qkv.to(DEV)
    q, k = _heads(qkv, 0, 2), _heads(qkv, 1, 2)
    layout = routing.routing_layout(qkv.shape[1], qkv.shape[2], n_win, 16, 16, DEV)
    idx, route = routing.route_qkv(qkv, n_win, topk)[:2]
    assert torch.equal(routing.route_regions(q, k, n_win, topk).cpu(), want)              # the twin
    assert torch.equal(routing.route_regions(q, k, n_win, topk, layout).cpu(), want)      # the unfused Triton op
    assert torch.equal(idx.cpu(), want)                                                    # Triton kernels
    assert torch.equal(route.cpu(), torch.zeros(aff.shape).scatter_(2, want, 1.0))


def test_identical_regions_pick_the_lowest_indices():
    """All regions identical (a constant map): every affinity of a row ties; every path takes regions 0..topk-1,
    where ``torch.topk`` on the CPU takes others (it leaves ties unspecified)."""
    qkv = torch.full((1, 8, 8, 3 * 16), 0.5, device=DEV)
    want = torch.arange(5).expand(1, 16, 5)
    q, k = _heads(qkv, 0, 1), _heads(qkv, 1, 1)
    assert torch.equal(routing.route_regions(q, k, 4, 5).cpu(), want)
    assert torch.equal(routing.route_qkv(qkv, 4, 5)[0].cpu(), want)


@pytest.mark.parametrize('b, r, c, chunk', [(2, 9, 64, None), (2, 16, 96, 2 * 16 * 96 * 3)])
def test_identical_key_regions_score_identically(monkeypatch, b, r, c, chunk):
    """Identical key regions of arbitrary (non-dyadic) fp32 values get bit-identical affinities in every query row
    (a BLAS matmul may sum one column in another order: MKL's AVX-512 sgemm does for 9 columns), also when the
    query rows go in chunks; and the scores are the product within fp32 rounding."""
    if chunk:
        monkeypatch.setattr(routing, '_AFFINITY_CHUNK', chunk)         # 3 query rows per chunk: 6 chunks
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, r, c, generator=g).to(DEV)
    k = torch.randn(b, 1, c, generator=g).expand(b, r, c).contiguous().to(DEV)
    a = routing.affinity(q, k)
    assert torch.equal(a, a[..., :1].expand_as(a))
    torch.testing.assert_close(a.double(), q.double() @ k.double().transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_empty_regions_last_lowest_index_first():
    """Ragged 5 x 7 map, n_win 4: row band 3 is empty (regions 12..15); topk 14 takes the 12 non-empty regions by
    the rule, then empty regions 12 and 13, on both implementations."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randint(-1, 2, (2, 5, 7, 3 * 8), generator=g).float().to(DEV)
    q, k = _heads(qkv, 0, 2), _heads(qkv, 1, 2)
    twin = routing.route_regions(q, k, 4, 14)
    assert torch.equal(twin[..., 12:].cpu(), torch.tensor([12, 13]).expand(2, 16, 2))
    assert torch.equal(routing.route_qkv(qkv, 4, 14)[0], twin)


@pytest.mark.gpu
def test_rule_is_cuda_topk():
    """The official code's ``torch.topk`` on the GPU picks the same set (its order within equal values aside); the
    CPU's ``torch.topk`` leaves ties open, so only the GPU can show the official rule."""
    scores = torch.randint(-2, 3, (64, 256), generator=torch.Generator().manual_seed(1)).float().cuda()
    for topk in (1, 4, 16, 100, 256):
        official = torch.topk(scores, topk, dim=-1).indices
        assert torch.equal(official.sort(-1).values, routing.select_regions(scores, topk).sort(-1).values)
