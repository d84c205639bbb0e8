"""Sizes larger than the input: window / kernel / dilation / n_win / topk are clamped (sparse_ops.functional) to the
smallest value with the same output, so memory follows the tokens; batch 0 gives an empty output."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sparse_ops as so
from sparse_ops import reference as ref

REPO = Path(__file__).resolve().parents[2]


def _t(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize('n', [1, 2, 5, 17, 40])
def test_1d_clamp_is_exact(n):
    """The public function (clamped) equals the twin called with the requested size, for every size up to 3N+2."""
    q, k, v = _t(2, 2, n, 4), _t(2, 2, n, 4), _t(2, 2, n, 4)
    for size in range(1, 3 * n + 3):
        for shift in (False, True):
            torch.testing.assert_close(so.hilbert_window_attention(q, k, v, size, shift, backend='torch'),
                                       ref.hilbert_window_attention(q, k, v, size, shift), rtol=0, atol=1e-12)
        torch.testing.assert_close(so.hilbert_slide_attention(q, k, v, size, backend='torch'),
                                   ref.hilbert_slide_attention(q, k, v, size), rtol=0, atol=1e-12)
        torch.testing.assert_close(so.hilbert_neighborhood_attention_1d(q, k, v, size, backend='torch'),
                                   ref.hilbert_neighborhood_attention_1d(q, k, v, size), rtol=0, atol=1e-12)


@pytest.mark.parametrize('hw', [(1, 1), (1, 7), (5, 3), (6, 9)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_2d_clamp_is_exact(hw):
    """Neighbourhood (output and rpb gradient) and routing equal the twin with the requested sizes."""
    q, k, v = _t(1, 2, *hw, 4), _t(1, 2, *hw, 4), _t(1, 2, *hw, 4)
    for kernel in (1, 3, 5, 9, 13, 21):
        rpb = _t(2, 2 * kernel - 1, 2 * kernel - 1).requires_grad_()
        for dilation in (1, 2, 5, 9, 12):
            got = so.neighborhood_attention_2d(q, k, v, kernel, dilation, rpb, backend='torch')
            want = ref.neighborhood_attention_2d(q, k, v, kernel, dilation, rpb)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
            torch.testing.assert_close(torch.autograd.grad(got.sum(), rpb)[0], torch.autograd.grad(want.sum(), rpb)[0],
                                       rtol=0, atol=1e-12)
    for n_win in range(1, 14):
        for topk in sorted({1, 2, 3, n_win * n_win}):
            if topk <= n_win * n_win:
                torch.testing.assert_close(so.bilevel_routing_attention(q, k, v, n_win, topk, backend='torch'),
                                           ref.bilevel_routing_attention(q, k, v, n_win, topk), rtol=0, atol=1e-12)


MEMORY = '''
import resource, sys, torch
import sparse_ops as so
torch.manual_seed(0)
h, w, d, big = 12, 15, 16, 2**31 - 1
q1 = [torch.randn(1, 2, h * w, d) for _ in range(3)]
q2 = [torch.randn(1, 2, h, w, d) for _ in range(3)]
rpb = torch.randn(2, 2 * 1001 - 1, 2 * 1001 - 1)
# guard the machine: an unclamped call asks for GBs (up to 144 GB) and fails here instead of swapping
vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.RLIM_INFINITY))
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
backend = sys.argv[1]
before = peak()
for window in (10**6, big):
    for shift in (False, True):
        so.hilbert_window_attention(*q1, window, shift, backend=backend)
so.hilbert_slide_attention(*q1, big, backend=backend)
so.hilbert_neighborhood_attention_1d(*q1, big, backend=backend)
so.neighborhood_attention_2d(*q2, 10001, backend=backend)
so.neighborhood_attention_2d(*q2, 1001, 10**6, rpb, backend=backend)
so.bilevel_routing_attention(*q2, 10**4, 5, backend=backend)
so.bilevel_routing_attention(*q2, big, big, backend=backend)
print(peak() - before)
'''


def _peak_growth(backend: str) -> int:
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(MEMORY), backend], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return int(r.stdout.split()[-1])


def test_memory_follows_the_tokens_twin():
    """180 tokens with window 2**31-1, kernel 10001, dilation 10**6, n_win 10**4: the peak resident memory of the
    process grows by less than 256 MiB (before the clamp: 1.4 GB to 144 GB requested)."""
    assert _peak_growth('torch') < 256 << 20


@pytest.mark.slow
def test_memory_follows_the_tokens_triton_interpreter():
    assert _peak_growth('triton') < 256 << 20


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_batch_zero_gives_an_empty_output(backend):
    d = 16  # a head dim the Triton core takes
    calls = [
        (so.hilbert_window_attention, (1, 2, 15, d), (7,), dict(shift=True)),
        (so.hilbert_slide_attention, (1, 2, 15, d), (7,), {}),
        (so.hilbert_neighborhood_attention_1d, (1, 2, 15, d), (7,), {}),
        (so.neighborhood_attention_2d, (1, 2, 5, 3, d), (3, 2), {}),
        (so.bilevel_routing_attention, (1, 2, 5, 3, d), (2, 1), {}),
    ]
    for fn, shape, args, kwargs in calls:
        for empty in ((0,) + shape[1:], shape[:1] + (0,) + shape[2:]):  # batch 0, heads 0
            q = torch.randn(empty, requires_grad=True)
            out = fn(q, q, q, *args, backend=backend, **kwargs)
            assert out.shape == q.shape and out.dtype == q.dtype
            out.sum().backward()
            assert q.grad.shape == q.shape
    for pattern, shape, args in (('window', (0, 15, 6 * d), (7,)), ('na2d', (0, 5, 3, 6 * d), (3,)),
                                 ('routing', (0, 5, 3, 6 * d), (2, 1))):
        qkv = torch.randn(shape, requires_grad=True)
        out = so.qkv_attention(qkv, 2, pattern, *args, backend=backend)
        assert out.shape == shape[:-1] + (2 * d,)
        out.sum().backward()
        assert qkv.grad.shape == qkv.shape


def test_clamp_is_exact_on_the_triton_path():
    """The Triton path (interpreter) with the clamped sizes equals it with sizes a little past the input's."""
    from sparse_ops.kernels import triton_api as tri
    g = torch.Generator().manual_seed(0)
    q1 = [torch.randn(1, 2, 20, 16, generator=g) for _ in range(3)]
    q2 = [torch.randn(1, 2, 5, 4, 16, generator=g) for _ in range(3)]
    rpb = torch.randn(2, 17, 17, generator=g)
    pairs = [
        (so.hilbert_window_attention(*q1, 23, backend='triton'), tri.hilbert_window_attention(*q1, 23)),
        (so.hilbert_window_attention(*q1, 45, True, backend='triton'), tri.hilbert_window_attention(*q1, 45, True)),
        (so.hilbert_slide_attention(*q1, 47, backend='triton'), tri.hilbert_slide_attention(*q1, 47)),
        (so.hilbert_neighborhood_attention_1d(*q1, 25, backend='triton'),
         tri.hilbert_neighborhood_attention_1d(*q1, 25)),
        (so.neighborhood_attention_2d(*q2, 9, 1, rpb, backend='triton'), tri.neighborhood_attention_2d(*q2, 9, 1, rpb)),
        (so.neighborhood_attention_2d(*q2, 9, 7, rpb, backend='triton'), tri.neighborhood_attention_2d(*q2, 9, 7, rpb)),
        (so.bilevel_routing_attention(*q2, 7, 30, backend='triton'), tri.bilevel_routing_attention(*q2, 7, 30)),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_routing_plan_of_the_fused_block_is_clamped_like_the_op():
    """``routing_qkv_plan`` (the packed op and the fused BiFormer block) routes over the regions of
    ``clamp_routing``, as the twin and the unfused op do: a 4 x 3 map with ``n_win`` 8 / 10**4 has 12 non-empty
    1-pixel regions and the pattern's tables are those of ``n_win`` 4, ``topk`` 12 (before, 64 / 10**8 regions)."""
    from sparse_ops.kernels import triton_api as tri
    from sparse_ops.routing import clamp_routing
    heads, d = 2, 16
    qkv = torch.randn(1, 4, 3, 3 * heads * d, generator=torch.Generator().manual_seed(0))
    assert clamp_routing(8, 16, 4, 3) == (4, 12) and clamp_routing(10**4, 10**4, 4, 3) == (4, 12)
    want, _ = tri.routing_qkv_plan(qkv, heads, 4, 12)
    for n_win, topk in ((8, 16), (10**4, 10**4)):
        got, _ = tri.routing_qkv_plan(qkv, heads, n_win, topk)
        for name in ('kv_num', 'kv_idx', 'q_num', 'q_idx'):
            a, b = getattr(got, name), getattr(want, name)
            assert a is not None and torch.equal(a, b), f'n_win={n_win}: {name} differs from the clamped plan'
