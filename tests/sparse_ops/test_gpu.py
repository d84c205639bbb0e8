"""GPU tests of the Triton core at real shapes (skipped without CUDA): bf16 / fp16 / fp32(tf32) numerics of output
and every gradient vs the twins (same 2x-of-torch rule as the CPU tests), every config of the GPU search space,
a rerun-for-races test and a no-host-sync check of the routing path."""
from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip('needs a CUDA device', allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
from test_block_sparse import check_case, nan_poisoned_empty  # noqa: E402,F401 (autouse fixture)

from sparse_ops import triton_api  # noqa: E402
from sparse_ops.block_sparse_fwd import configs_for  # noqa: E402

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

REAL = [
    ('hilbert_window_attention', (2, 4, 64 * 64, 32), dict(window=64), 0),
    ('hilbert_window_attention', (2, 4, 56 * 60, 32), dict(window=49, shift=True, hw=(56, 60)), 97),  # HWT's table
    ('hilbert_slide_attention', (1, 3, 80 * 72, 64), dict(window=49), 0),
    ('hilbert_neighborhood_attention_1d', (1, 2, 50 * 77, 128), dict(kernel=49, hw=(50, 77)), 13),
    ('neighborhood_attention_2d', (2, 4, 64, 64, 32), dict(kernel_size=7), 13),
    ('neighborhood_attention_2d', (1, 3, 50, 84, 32), dict(kernel_size=7, dilation=4), 13),
    ('neighborhood_attention_2d', (1, 2, 21, 13, 64), dict(kernel_size=13, dilation=2), 25),
    ('bilevel_routing_attention', (2, 4, 64, 64, 32), dict(n_win=8, topk=4), 0),
    ('bilevel_routing_attention', (1, 3, 50, 84, 32), dict(n_win=8, topk=4), 0),
    ('bilevel_routing_attention', (1, 2, 30, 31, 64), dict(n_win=7, topk=49), 0),
    # BiFormer-S stage 3 at 1024² and 1333x800 (16- and 24-token regions: the small-region 16 x 16 tiles)
    ('bilevel_routing_attention', (2, 8, 64, 64, 32), dict(n_win=16, topk=16), 0),
    ('bilevel_routing_attention', (1, 8, 50, 84, 32), dict(n_win=16, topk=16), 0),
]


def _ids(case):
    name, shape, kw, rpb = case
    return f'{name.split("_attention")[0]}-{"x".join(map(str, shape))}-' + '-'.join(
        f'{k}{v}' for k, v in kw.items() if k != 'hw') + ('-rpb' if rpb else '')


@pytest.mark.parametrize('dtype', [BF16, FP16, FP32], ids=['bf16', 'fp16', 'fp32'])
@pytest.mark.parametrize('name,shape,kwargs,rpb_side', REAL, ids=[_ids(c) for c in REAL])
def test_real_shapes(name, shape, kwargs, rpb_side, dtype):
    check_case(name, shape, kwargs, dtype=dtype, rpb_side=rpb_side)


@pytest.mark.parametrize('config', configs_for(32, interpret=False), ids=str)
def test_every_gpu_config(config):
    check_case('neighborhood_attention_2d', (1, 2, 37, 45, 32), dict(kernel_size=7, dilation=2),
               dtype=BF16, config=config, rpb_side=13)
    check_case('bilevel_routing_attention', (1, 2, 37, 45, 32), dict(n_win=5, topk=3), dtype=BF16, config=config)


@pytest.mark.parametrize('name,shape,kwargs,rpb_side', [REAL[1], REAL[4], REAL[8]],
                         ids=['window-rpb', 'na2d-rpb', 'routing'])
def test_rerun_for_races(name, shape, kwargs, rpb_side):
    """Same inputs twice: output, dq, dk, dv bitwise equal; drpb (fp32 atomics) equal up to summation order."""
    g = torch.Generator(device='cuda').manual_seed(7)
    qkv = [torch.randn(shape, generator=g, device='cuda', dtype=BF16) for _ in range(3)]
    rpb = torch.randn(shape[1], rpb_side, rpb_side, generator=g, device='cuda') if rpb_side else None
    grad = torch.randn(shape, generator=g, device='cuda', dtype=BF16)
    fn = getattr(triton_api, name)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in qkv]
        kw = dict(kwargs)
        if rpb is not None:
            kw['rpb'] = rpb.clone().requires_grad_()
        out = fn(*leaves, **kw)
        wrt = leaves + ([kw['rpb']] if rpb is not None else [])
        runs.append([out.detach()] + list(torch.autograd.grad(out, wrt, grad)))
    for i, (a, b) in enumerate(zip(*runs)):
        if i < 4:
            assert torch.equal(a, b), f'{name}: tensor {i} differs between identical runs (race)'
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_routing_builds_tables_without_host_sync():
    q, k, v = (torch.randn(2, 4, 64, 64, 32, device='cuda', dtype=BF16) for _ in range(3))
    triton_api.bilevel_routing_attention(q, k, v, 8, 4)          # warm caches (static layout, compile)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        triton_api.bilevel_routing_attention(q, k, v, 8, 4)
    finally:
        torch.cuda.set_sync_debug_mode('default')


HOT = [((2, 2, 256, 256, 32), dict(n_win=16, topk=1)), ((2, 8, 64, 64, 32), dict(n_win=16, topk=16))]


@pytest.mark.parametrize('shape,kwargs', HOT, ids=['stage1-1024', 'stage3-1024'])
def test_routing_hot_regions_real_shapes(monkeypatch, shape, kwargs):
    """Every query region routes to region (0, 0), as at BiFormer-S's initialisation: the split dK/dV pass
    (block_sparse_bwd, design note 3) at its stage-1 and stage-3 shapes (1024²) against the twin, bitwise equal
    reruns, and a backward without host sync."""
    from test_block_sparse import _inputs, force_chunk
    check_case('bilevel_routing_attention', shape, kwargs, dtype=BF16, hot=True)
    qkv, _ = _inputs(shape, BF16, 0, shape[1], 0, hot=kwargs['n_win'])
    chunks = force_chunk(monkeypatch)
    runs = []
    for i in range(2):
        leaves = [t.to('cuda', BF16).requires_grad_() for t in qkv]
        out = triton_api.bilevel_routing_attention(*leaves, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error' if i else 'default')
        try:
            runs.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
        finally:
            torch.cuda.set_sync_debug_mode('default')
    assert chunks and all(chunks), f'the split pass was not taken: chunk lengths {chunks}'
    assert all(torch.equal(a, b) for a, b in zip(*runs)), 'the split dK/dV pass is not deterministic'


def _build(kind, args, device):
    from sparse_ops import patterns
    return dict(na2d=patterns.na2d_pattern, window=patterns.hilbert_window_pattern,
                slide=patterns.hilbert_slide_pattern, na1d=patterns.hilbert_na1d_pattern)[kind](*args, 64, 32, device)


@pytest.mark.parametrize('kind,args', [('na2d', (200, 333, 7, 1)), ('na2d', (100, 167, 7, 4)),
                                       ('na2d', (31, 45, 13, 2)), ('window', (200 * 333, 64, True)),
                                       ('window', (3000, 49, False)), ('slide', (5000, 49)), ('na1d', (4999, 49))],
                         ids=lambda v: str(v))
def test_pattern_tables_built_on_the_gpu_equal_the_cpu_build(kind, args):
    """The builders run on the pattern's device; their CUDA tables are the CPU tables (NAT / DiNAT / HWT shapes:
    1333x800 stage 1, a dilated stage, a large kernel; windows, bands, 1D neighbourhoods)."""
    gpu, cpu = _build(kind, args, 'cuda'), _build(kind, args, 'cpu')
    assert gpu.kv_idx.is_cuda
    for name in ('kv_num', 'q_num', 'qwin', 'tok', 'perm', 'inv_perm', 'rows'):
        a, b = getattr(gpu, name), getattr(cpu, name)
        assert (a is None) == (b is None) and (a is None or torch.equal(a.cpu(), b)), name
    for num, idx in (('kv_num', 'kv_idx'), ('q_num', 'q_idx')):  # entries past num are unspecified
        a, b, cnt = getattr(gpu, idx).cpu(), getattr(cpu, idx), getattr(cpu, num)
        valid = torch.arange(a.shape[-1])[None, None, :] < cnt[..., None].long()
        assert a.shape == b.shape and torch.equal(a[valid], b[valid]), idx
