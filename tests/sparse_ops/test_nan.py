"""NaN propagation as documented in docs/design.md ("NaN and inf"), on the twin and the Triton path (interpreter).

Which queries attend a token j is measured without any NaN: with v the one-hot of token j (channel 0), output
row i channel 0 is the attention weight of j for query i, which is > 0 exactly when i attends j.
"""
from __future__ import annotations

import pytest
import torch

import sparse_ops as so
from sparse_ops.reference.routing import route_regions

D = 16  # a head dim the Triton core takes
NAN = float('nan')

CASES = {  # name: (function, q shape without the head dim, positional arguments)
    'window': (so.hilbert_window_attention, (1, 1, 45), (7,)),
    'window-shift': (so.hilbert_window_attention, (1, 1, 45), (7, True)),
    'slide': (so.hilbert_slide_attention, (1, 1, 45), (7,)),
    'na1d': (so.hilbert_neighborhood_attention_1d, (1, 1, 45), (7,)),
    'na2d': (so.neighborhood_attention_2d, (1, 1, 9, 7), (3, 2)),
    'routing': (so.bilevel_routing_attention, (1, 1, 8, 8), (4, 2)),
}


def _inputs(shape):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, D, generator=g) for _ in range(3)]


def _rows(out):
    """(tokens,) bool: output rows that hold a NaN (flattened spatial dims)."""
    return torch.isnan(out).any(-1).reshape(-1)


def _attending(fn, shape, args, backend, j):
    q, k, _ = _inputs(shape)
    v = torch.zeros(*shape, D)
    v.view(-1, D)[j, 0] = 1.0
    return fn(q, k, v, *args, backend=backend).reshape(-1, D)[:, 0] > 0


def _poisoned(fn, shape, args, backend, which, j):
    q, k, v = _inputs(shape)
    {'q': q, 'k': k, 'v': v}[which].view(-1, D)[j, 3] = NAN
    return _rows(fn(q, k, v, *args, backend=backend))


@pytest.mark.parametrize('backend', ['torch', 'triton'])
@pytest.mark.parametrize('name', list(CASES))
def test_nan_in_q_and_k(name, backend):
    """q[i]: only output row i. k[j]: exactly the rows of the queries that attend j (masked logits are replaced
    before the softmax) - except routing, where k enters the region means (next test)."""
    fn, shape, args = CASES[name]
    n = torch.Size(shape).numel()
    for j in (0, n // 2, n - 1):
        assert torch.equal(_poisoned(fn, shape, args, backend, 'q', j), torch.arange(n) == j)
        if name != 'routing':
            assert torch.equal(_poisoned(fn, shape, args, backend, 'k', j), _attending(fn, shape, args, backend, j))


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_nan_in_k_of_routing_reaches_every_query(backend):
    """A NaN in k[j] makes the affinity of j's region NaN for every query region; torch.topk ranks NaN above every
    number, so every query region routes to it and every output row is NaN."""
    fn, shape, args = CASES['routing']
    assert _poisoned(fn, shape, args, backend, 'k', 9).all()


@pytest.mark.parametrize('name', list(CASES))
def test_nan_in_v_twin(name):
    """Twin: at least the queries that attend j; exactly them for windows (the query block is the window) and
    routing (only routed regions are gathered); for slide / na1d / na2d every query of the twin's query block
    whose gathered key span holds j (0 * NaN in the weighted sum)."""
    fn, shape, args = CASES[name]
    n = torch.Size(shape).numel()
    for j in (0, n // 2, n - 1):
        got = _poisoned(fn, shape, args, 'torch', 'v', j)
        want = _attending(fn, shape, args, 'torch', j)
        if name.startswith('window') or name == 'routing':
            assert torch.equal(got, want)
        else:
            assert (got | ~want).all() and got.sum() <= max(64, 2 * want.sum())


@pytest.mark.parametrize('name', list(CASES))
def test_nan_in_v_triton(name):
    """Triton path (not equal to the twin, see docs/design.md): at least the queries that attend j, and every query
    of a query tile that loads j's key tile (0 * NaN in the tile's dot product), up to all of them."""
    fn, shape, args = CASES[name]
    n = torch.Size(shape).numel()
    for j in (0, n // 2):
        got = _poisoned(fn, shape, args, 'triton', 'v', j)
        assert (got | ~_attending(fn, shape, args, 'triton', j)).all()


def test_routing_attending_oracle_matches_the_routing():
    """The one-hot oracle agrees with route_regions: a query attends j iff its region routes to j's region."""
    fn, shape, (n_win, topk) = CASES['routing']
    q, k, _ = _inputs(shape)
    idx = route_regions(q, k, n_win, topk)[0]                      # (regions, topk)
    h, w = shape[2:]
    rh, rw = -(-h // n_win), -(-w // n_win)
    region = (torch.arange(h)[:, None] // rh * n_win + torch.arange(w)[None] // rw).reshape(-1)
    j = 27
    want = (idx[region] == region[j]).any(-1)
    assert torch.equal(_attending(fn, shape, (n_win, topk), 'torch', j), want)
