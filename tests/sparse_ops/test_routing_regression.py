"""Regression checks for BiFormer's bi-level routing under the conditions the backbone creates.

1. Routing must not depend on autocast. Under ``torch.autocast`` the region-affinity matmul ran in bf16 (both the
   Triton path's and the twin's routing, now ``sparse_ops.routing.affinity``), so near-tied affinities became exact
   ties and the top-k flipped with the last bit of the inputs; whole query regions then routed differently from the fp32
   reference. That made the GPU whole-backbone comparison (tests/backbones/test_gpu_backbones.py, BiFormer-S)
   report 3-5x gradient errors on whichever path flipped (see docs/benchmarks.md, "Backbones").
2. The Triton core equals the fp64 twin (fp32 is exact in the interpreter) with BiFormer's call: scale
   ``(heads * D) ** -0.5``, non-contiguous q/k/v views of one qkv projection, ragged and empty regions, per-batch
   routes, gradients through q, k and v.
"""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip('triton')

from sparse_ops import routing, triton_api  # noqa: E402
from sparse_ops.block_sparse import block_sparse_attention  # noqa: E402
from sparse_ops.block_sparse_fwd import Config  # noqa: E402
from sparse_ops.reference import route_regions  # noqa: E402
from sparse_ops.reference import routing as twin  # noqa: E402

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'


def _qkv(b, heads, h, w, d, seed, dtype=torch.float32):
    """A BiFormer-like qkv projection output (B, H, W, 3*C) and its head-split q, k, v views (non-contiguous)."""
    g = torch.Generator().manual_seed(seed)
    c = heads * d
    x = torch.randn(b, h, w, c, generator=g, dtype=torch.float64)
    weight = 0.03 * torch.randn(c, 3 * c, generator=g, dtype=torch.float64)
    qkv = (x @ weight + 0.02 * torch.randn(3 * c, generator=g, dtype=torch.float64)).to(dtype)
    return qkv


def _split(qkv, heads, d):
    b, h, w, _ = qkv.shape
    return qkv.view(b, h, w, 3, heads, d).permute(3, 0, 4, 1, 2, 5).unbind(0)


@pytest.mark.parametrize('which', ['layout', 'triton-kernels', 'twin'])
def test_routing_ignores_autocast(which):
    """bf16 q, k: the routes under bf16 autocast equal the routes without it (affinity stays fp32)."""
    b, heads, d, h, w, n_win, topk = 2, 8, 32, 16, 21, 8, 16
    layout = routing.routing_layout(h, w, n_win, 16, 16)
    flips = 0
    for seed in range(4):
        qkv = _qkv(b, heads, h, w, d, seed, torch.bfloat16)
        q, k, _ = _split(qkv, heads, d)

        def route():
            if which == 'layout':             # what the unfused Triton op calls
                return routing.route_regions(q, k, n_win, topk, layout)
            if which == 'triton-kernels':     # what the packed routing attention and the fused block call
                return routing.route_qkv(qkv, n_win, topk)[0]
            return route_regions(q, k, n_win, topk)
        plain = route().sort(-1).values
        with torch.autocast('cpu', dtype=torch.bfloat16):
            auto = route().sort(-1).values
        flips += int((plain != auto).any(-1).sum())
    assert flips == 0, f'{which}: {flips} query regions route differently under bf16 autocast'


@pytest.mark.skipif(not INTERPRET, reason='fp32 exactness needs the Triton interpreter (GPUs run fp32 tl.dot in tf32)')
@pytest.mark.parametrize('shape,n_win,topk', [
    ((2, 2, 16, 21, 32), 8, 16),   # BiFormer-S stage 3 at 256x328: bands of 2 rows / 3 cols, ragged last ones
    ((2, 2, 6, 11, 32), 8, 16),    # empty row and column bands
    ((2, 2, 4, 3, 32), 8, 16),     # fewer non-empty regions than topk (61x37 input, stage 3)
    ((3, 2, 9, 13, 16), 4, 5),
])
def test_triton_equals_fp64_twin_biformer_call(shape, n_win, topk):
    b, heads, h, w, d = shape
    scale = (heads * d) ** -0.5
    base = _qkv(b, heads, h, w, d, seed=1, dtype=torch.float64)
    q64, k64, _ = _split(base, heads, d)
    idx = route_regions(q64, k64, n_win, topk)            # one routing for both (fp32 vs fp64 ties aside)
    assert not torch.equal(idx[0], idx[-1]), 'want batch-dependent routes'
    dout = torch.randn(b, heads, h, w, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cfg = Config(16, 16, 1, 1)
    results = []
    for dtype in (torch.float64, torch.float32):
        x = base.detach().clone().to(dtype).requires_grad_(True)
        q, k, v = _split(x, heads, d)
        if dtype == torch.float64:
            o = twin.bilevel_routing_attention(q, k, v, n_win, topk, scale=scale)
        else:
            layout = routing.routing_layout(h, w, n_win, cfg.block_m, cfg.block_n, q.device)
            p = routing.routing_pattern(layout, idx)
            flat = triton_api._flat
            o = block_sparse_attention(flat(q), flat(k), flat(v), p, scale, None, cfg).view(q.shape)
        (o * dout.to(dtype)).sum().backward()
        results.append((o.detach().double(), x.grad.double()))
    (o_ref, g_ref), (o_tri, g_tri) = results
    c = heads * d
    assert (o_tri - o_ref).abs().max() <= 1e-5 * o_ref.abs().max()
    for i, name in enumerate('qkv'):
        ref, tri = g_ref[..., i * c:(i + 1) * c], g_tri[..., i * c:(i + 1) * c]
        err = ((tri - ref).abs().max() / ref.abs().max()).item()
        assert err <= 1e-5, f'd{name}: relative error {err:.2e}'
