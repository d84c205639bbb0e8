"""The Triton block-sparse core vs the PyTorch twins: every pattern, every interpreter config, odd sizes, all
gradients (q, k, v, rpb), fp32 and fp16, plus a seeded random sweep (``SPARSE_OPS_SWEEP=1`` for >= 500 cases).

On CPU the kernels run under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it before any kernel module is
imported); bf16 is GPU-only (tests/sparse_ops/test_gpu.py). Tolerance (flash-attention's rule): the kernel's error
vs an fp64 run of the twin must be <= 2x the error of the twin run in the same dtype, plus a small atol.
Outputs are allocated NaN-poisoned (``torch.empty`` patched), so an unwritten tile fails.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

triton = pytest.importorskip('triton')

if not torch.cuda.is_available() and os.environ.get('TRITON_INTERPRET') != '1':
    pytest.skip('needs CUDA or TRITON_INTERPRET=1', allow_module_level=True)

import sparse_ops  # noqa: E402
from sparse_ops import reference, routing  # noqa: E402
from sparse_ops import triton_api  # noqa: E402
from sparse_ops.block_sparse_fwd import Config, configs_for  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
CONFIGS = configs_for(16, interpret=DEVICE == 'cpu')
# fp32: exact tl.dot in the interpreter; tf32 (Triton's default fp32 dot) on GPUs
ATOL = {torch.float32: 2e-5 if DEVICE == 'cpu' else 4e-3, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled float tensors so unwritten outputs show up."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float('nan'))
        return t

    monkeypatch.setattr(torch, 'empty', lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, 'empty_like', lambda *a, **k: poison(real_empty_like(*a, **k)))


# ------------------------------------------------------------------------------------------------------------
# one case = (name of the public function, args); run kernel, twin in dtype, twin in fp64
# ------------------------------------------------------------------------------------------------------------
def _inputs(shape, dtype, rpb_side, heads, seed, hot=None):
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]
    rpb = torch.randn(heads, rpb_side, rpb_side, generator=g, dtype=torch.float64) if rpb_side else None
    if hot:     # routing with n_win = hot: the keys of region (0, 0) along the mean query, so every region routes there
        q, k = qkv[:2]
        rh, rw = -(-shape[2] // hot), -(-shape[3] // hot)
        mean = q.mean((2, 3), keepdim=True)
        k[:, :, :rh, :rw] += 3 * mean / mean.norm(dim=-1, keepdim=True)
    return qkv, rpb


def _run(fn, qkv, rpb, dtype, kwargs, grad_out, device):
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in qkv]
    rpb_leaf = rpb.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype).requires_grad_() \
        if rpb is not None else None
    kw = dict(kwargs)
    if rpb_leaf is not None:
        kw['rpb'] = rpb_leaf
    out = fn(*leaves, **kw)
    wrt = leaves + ([rpb_leaf] if rpb_leaf is not None else [])
    grads = torch.autograd.grad(out, wrt, grad_out.to(device=device, dtype=out.dtype))
    return [t.detach().double().cpu() for t in (out, *grads)]


def check_case(name, shape, kwargs, dtype=torch.float32, config=None, rpb_side=0, seed=0, hot=False):
    """Compare the Triton function ``name`` with its twin on one input; returns the worst error ratio. ``hot``
    (routing): every query region routes to region (0, 0), as at BiFormer's initialisation."""
    qkv, rpb = _inputs(shape, dtype, rpb_side, shape[1], seed, kwargs['n_win'] if hot else None)
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(shape, generator=g, dtype=torch.float64)
    twin = getattr(reference, name)
    kern = getattr(triton_api, name)
    ref = _run(twin, qkv, rpb, torch.float64, kwargs, grad_out, DEVICE)
    same = _run(twin, qkv, rpb, dtype, kwargs, grad_out, DEVICE)
    got = _run(lambda *a, **k: kern(*a, config=config, **k), qkv, rpb, dtype, kwargs, grad_out, DEVICE)
    labels = ['out', 'dq', 'dk', 'dv', 'drpb']
    worst = 0.0
    for label, r, s, t in zip(labels, ref, same, got):
        assert not torch.isnan(t).any(), f'{name} {label}: NaN (unwritten or invalid) in the kernel result'
        scale = max(1.0, r.abs().max().item())
        atol = ATOL[dtype] * scale * (4 if label == 'drpb' else 1)
        err_t, err_s = (t - r).abs().max().item(), (s - r).abs().max().item()
        assert err_t <= 2 * err_s + atol, (f'{name} {label} {tuple(shape)} {kwargs} {dtype} {config}: kernel err '
                                           f'{err_t:.3e} > 2 x torch err {err_s:.3e} + atol {atol:.1e}')
        worst = max(worst, err_t / (2 * err_s + atol))
    return worst


def _id(v):
    if isinstance(v, Config):
        return str(v)
    if isinstance(v, torch.dtype):
        return str(v).replace('torch.', '')
    return None


# ------------------------------------------------------------------------------------------------------------
# every pattern x every config the interpreter / GPU space has
# ------------------------------------------------------------------------------------------------------------
PATTERN_CASES = [
    ('hilbert_window_attention', (1, 2, 45, 16), dict(window=9)),
    ('hilbert_window_attention', (1, 2, 45, 16), dict(window=9, shift=True)),
    ('hilbert_slide_attention', (1, 2, 45, 16), dict(window=11)),
    ('hilbert_neighborhood_attention_1d', (1, 2, 45, 16), dict(kernel=7)),
    ('neighborhood_attention_2d', (1, 2, 7, 9, 16), dict(kernel_size=3, dilation=2)),
    ('bilevel_routing_attention', (2, 2, 7, 9, 16), dict(n_win=3, topk=2)),
]


@pytest.mark.parametrize('config', CONFIGS, ids=_id)
@pytest.mark.parametrize('name,shape,kwargs', PATTERN_CASES,
                         ids=[f'{c[0].split("_attention")[0]}-{"-".join(f"{k}{v}" for k, v in c[2].items())}'
                              for c in PATTERN_CASES])
def test_every_pattern_every_config(name, shape, kwargs, config):
    check_case(name, shape, kwargs, config=config)


# ------------------------------------------------------------------------------------------------------------
# odd sizes, borders, relative position bias and its gradient
# ------------------------------------------------------------------------------------------------------------
ODD_HW = [(1, 1), (1, 17), (13, 7), (31, 45)]
# 64 x 64 tiles (a legal config outside the interpreter space) keep the 31 x 45 case affordable on CPU
BIG = Config(64, 64, 4, 2)


@pytest.mark.parametrize('hw', ODD_HW, ids=lambda s: f'{s[0]}x{s[1]}')
def test_na2d_odd_sizes_rpb(hw):
    # kernel 5 > the side for 1x1, 1x17 and 13x7's sub-grids: the window covers the whole side
    check_case('neighborhood_attention_2d', (1, 1, *hw, 16), dict(kernel_size=5, dilation=2), rpb_side=9,
               config=BIG)


@pytest.mark.parametrize('hw', ODD_HW[:3], ids=lambda s: f'{s[0]}x{s[1]}')
def test_routing_odd_sizes(hw):
    check_case('bilevel_routing_attention', (1, 1, *hw, 16), dict(n_win=4, topk=3), config=BIG)


@pytest.mark.parametrize('hw', ODD_HW[:3], ids=lambda s: f'{s[0]}x{s[1]}')
def test_window_odd_sizes_rpb(hw):
    # window 20 is not a multiple of any block: ragged last window, shifted windows straddle blocks
    n = hw[0] * hw[1]
    check_case('hilbert_window_attention', (1, 1, n, 16), dict(window=20, shift=True, hw=hw), rpb_side=7,
               config=BIG)


@pytest.mark.parametrize('name,kw', [('hilbert_slide_attention', dict(window=9)),
                                     ('hilbert_neighborhood_attention_1d', dict(kernel=13))],
                         ids=['slide', 'na1d'])
def test_1d_rpb_grad(name, kw):
    check_case(name, (2, 2, 13 * 7, 32), dict(kw, hw=(13, 7)), rpb_side=5)


@pytest.mark.parametrize('kernel,dilation', [(3, 1), (7, 1), (3, 3), (7, 4)], ids=lambda v: str(v))
def test_na2d_kernel_dilation(kernel, dilation):
    check_case('neighborhood_attention_2d', (1, 2, 11, 10, 16), dict(kernel_size=kernel, dilation=dilation),
               rpb_side=2 * kernel - 1)


@pytest.mark.parametrize('topk', [1, 9], ids=lambda t: f'topk{t}')
def test_routing_topk_extremes(topk):
    # 3 x 3 regions: topk=9 is every region (global attention), topk=1 a single region
    check_case('bilevel_routing_attention', (2, 2, 10, 11, 16), dict(n_win=3, topk=topk))


@pytest.mark.parametrize('hw', [(16, 23), (40, 11)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_routing_groups_past_one_bit_word(hw):
    # 64 regions of 6 / 4 tokens, and 48 non-empty regions of 10 / 5 (empty bands): the kernels' route bit rows have
    # two 32-group words, and a key block straddles the boundary between them
    g = routing.routing_layout(*hw, 8, 16, 16).tok[:, 2].long()
    first = torch.nonzero(g == 32)[0, 0].item()
    assert first % 16 and g.max() >= 32, 'no key block holds groups 31 and 32'
    check_case('bilevel_routing_attention', (1, 2, *hw, 16), dict(n_win=8, topk=5))


def test_routing_more_regions_than_rows():
    # n_win 4 on 3 rows: ceil(3/4) = 1 row per band, the last band is empty; topk = all 16 includes empty ones
    check_case('bilevel_routing_attention', (1, 2, 3, 5, 16), dict(n_win=4, topk=16))


@pytest.mark.parametrize('hw,n_win,topk', [((12, 12), 3, 2), ((13, 7), 4, 5), ((3, 5), 4, 16)],
                         ids=['12x12', '13x7', '3x5-empty'])
def test_route_topk_matches_twin(hw, n_win, topk):
    """The Triton op's routing (``routing.route_regions`` with the cached layout, and the two-launch
    ``routing.route_qkv`` of the packed op) returns the twin's routes exactly, empty regions included."""
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, 3, *hw, 16, generator=g).to(DEVICE) for _ in range(2))
    layout = routing.routing_layout(*hw, n_win, 16, 16, q.device)
    ours = routing.route_regions(q, k, n_win, topk, layout)
    ref = reference.route_regions(q, k, n_win, topk)
    # the fused-projection variant: qkv (B, H, W, 3C) with q, k, v head-major in the channels
    qkv = torch.cat([t.permute(0, 2, 3, 1, 4).flatten(3) for t in (q, k, k)], -1)
    packed = routing.route_qkv(qkv, n_win, topk)[0]
    assert torch.equal(ours, ref) and torch.equal(packed, ref)
    assert torch.equal(layout.counts.cpu(), reference.region_partition(*hw, n_win)[2].sum(-1))


def force_chunk(monkeypatch, chunk=None) -> list:
    """Make the split dK/dV pass take ``chunk`` (None: its default, 0: no split); returns the list the chunk
    length of every backward is appended to (0 where the pass did not split)."""
    import sparse_ops.block_sparse_bwd as bsb
    default, chunks = bsb.split_chunk, []
    monkeypatch.setattr(bsb, 'split_chunk', lambda *a: chunks.append(default(*a[:4], chunk=chunk)) or chunks[-1])
    return chunks


@pytest.mark.parametrize('chunk', [None, 1, 3], ids=lambda c: f'chunk{c}')
def test_routing_hot_regions_split_dkdv(monkeypatch, chunk):
    # every query region routes to region (0, 0): its key blocks are visited by every query block, so the dK/dV
    # pass splits their lists into chunks (block_sparse_bwd, design note 3) and adds the partial sums up
    import sparse_ops.block_sparse_bwd as bsb
    chunks = force_chunk(monkeypatch, chunk)
    # the default chunk (MIN_CHUNK) needs more query blocks than that: 64 regions of 16 tokens, 64 query blocks
    shape, n_win = ((1, 2, 32, 32, 16), 8) if chunk is None else ((2, 2, 16, 15, 16), 4)  # 15: ragged regions
    for dtype in (torch.float32, torch.float16):
        check_case('bilevel_routing_attention', shape, dict(n_win=n_win, topk=2), dtype=dtype,
                   config=Config(16, 16, 1, 1), hot=True)
    assert chunks and all(chunks), f'the split pass was not taken: chunk lengths {chunks}'
    if chunk is None:
        assert chunks[0] == bsb.MIN_CHUNK     # the default; region (0, 0)'s key block is visited 64 times


def test_split_dkdv_is_deterministic_and_matches_one_pass(monkeypatch):
    qkv, _ = _inputs((1, 2, 16, 16, 16), torch.float32, 0, 2, 3, hot=4)
    results = []
    for chunk in (0, 2, 2, 5):
        with monkeypatch.context() as mp:
            force_chunk(mp, chunk)
            leaves = [t.float().to(DEVICE).requires_grad_() for t in qkv]
            out = triton_api.bilevel_routing_attention(*leaves, n_win=4, topk=3, config=Config(16, 16, 1, 1))
            results.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
    for got in results[1:]:
        for g, ref in zip(got, results[0]):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(results[1], results[2]))


@pytest.mark.parametrize('bt,n_kb,chunk', [(1, 5, 3), (2, 37, 4), (3, 2500, 8), (2, 1, 1)])
def test_split_tables_kernel_matches_twin(bt, n_kb, chunk):
    # the one-launch tables of the split dK/dV pass against their PyTorch twin: sparse, long and empty lists,
    # more key blocks than one 1024-wide step, a grid bound past the last chunk
    import sparse_ops.block_sparse_bwd as bsb
    g = torch.Generator().manual_seed(n_kb)
    q_num = (torch.randint(0, 6, (bt, n_kb), generator=g) * (torch.rand(bt, n_kb, generator=g) < 0.3) * 20)
    q_num = q_num.int().to(DEVICE)
    n_chunks_max = n_kb + -(-int(q_num.sum(1).max()) // chunk) + 3
    got, want = bsb._split_tables(q_num, chunk, n_chunks_max), bsb.split_tables_torch(q_num, chunk, n_chunks_max)
    for name, a, b in zip(('ck', 'cum', 'slot'), got, want):
        assert a.dtype == b.dtype == torch.int32 and torch.equal(a, b), name


def test_window_larger_than_sequence_and_scale():
    check_case('hilbert_window_attention', (1, 2, 10, 16), dict(window=64, scale=0.3))


@pytest.mark.parametrize('d', [16, 32, 64, 128], ids=lambda d: f'd{d}')
def test_head_dims(d):
    check_case('hilbert_slide_attention', (1, 1, 19, d), dict(window=7))


@pytest.mark.parametrize('name,shape,kwargs', [PATTERN_CASES[i] for i in (1, 3, 4, 5)],
                         ids=['window-shift', 'na1d', 'na2d', 'routing'])
def test_fp16(name, shape, kwargs):
    check_case(name, shape, kwargs, dtype=torch.float16)


def test_strided_inputs_and_outputs():
    """q/k/v as non-contiguous views of one packed qkv tensor (the usual layout in models)."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(1, 40, 3, 2, 16, generator=g).to(DEVICE).permute(2, 0, 3, 1, 4)   # (3, B, H, N, D) view
    q, k, v = (t.requires_grad_() for t in qkv.clone().unbind(0))
    qs, ks, vs = qkv.unbind(0)
    out = triton_api.hilbert_slide_attention(qs, ks, vs, 9)
    ref = reference.hilbert_slide_attention(q, k, v, 9)
    torch.testing.assert_close(out, ref, atol=ATOL[torch.float32], rtol=1e-5)


def test_can_run_triton_explains():
    q = torch.randn(1, 2, 10, 24).to(DEVICE)
    assert not sparse_ops.can_run_triton(q, pattern='window')
    with pytest.raises(ValueError, match='head_dim=24'):
        sparse_ops.can_run_triton(q, pattern='window', raise_error=True)
    with pytest.raises(ValueError, match='5-d q'):
        sparse_ops.can_run_triton(torch.randn(1, 2, 10, 16).to(DEVICE), pattern='na2d', raise_error=True)
    assert sparse_ops.can_run_triton(torch.randn(1, 2, 4, 4, 16).to(DEVICE), pattern='routing', n_win=2, topk=1)


def test_routing_config_takes_small_tiles_for_small_regions(monkeypatch):
    """On the GPU, regions of <= 32 tokens get 16 x 16 tiles (a 64-row block of 16-token regions visits the union
    of four regions' routes); larger regions keep the library default; the interpreter keeps its own."""
    from sparse_ops.block_sparse_fwd import INTERPRET_CONFIGS, SMALL_REGION_TOKENS, default_config
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    cuda = torch.device('cuda')                       # no tensor is made: runs without a GPU
    small, default = Config(16, 16, 1, 2), default_config(32, cuda)
    assert default != small
    assert triton_api.routing_config((2, 8, 64, 64, 32), cuda, 16) == small          # 4 x 4 = 16 tokens
    assert triton_api.routing_config((2, 8, 50, 84, 32), cuda, 16) == small          # 4 x 6 = 24
    assert triton_api.routing_config((2, 4, 128, 128, 32), cuda, 16) == default      # 8 x 8 = 64
    assert triton_api.routing_config((1, 2, 33, 33, 32), cuda, 1) == default         # one region of 1089
    assert default_config(32, cuda, region_tokens=SMALL_REGION_TOKENS) == small
    assert default_config(32, cuda, region_tokens=SMALL_REGION_TOKENS + 1) == default
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert triton_api.routing_config((2, 8, 64, 64, 32), cuda, 16) == INTERPRET_CONFIGS[0]


def test_torch_compile_traces_the_op():
    """Under torch.compile the registered op (fake impl + autograd registration) is traced, forward and backward."""
    import torch._dynamo.testing as dt
    counter = dt.CompileCounter()
    q, k, v = (torch.randn(1, 2, 40, 16).to(DEVICE).requires_grad_() for _ in range(3))
    rpb = torch.randn(2, 5, 5).to(DEVICE).requires_grad_()
    f = torch.compile(lambda q, k, v, rpb: triton_api.hilbert_window_attention(q, k, v, 8, rpb=rpb, hw=(5, 8)),
                      backend=counter, fullgraph=True)
    out = f(q, k, v, rpb)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, rpb))
    ref = reference.hilbert_window_attention(q, k, v, 8, rpb=rpb, hw=(5, 8))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v, rpb))
    tol = ATOL[torch.float32] * 4
    torch.testing.assert_close(out, ref, atol=tol, rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=tol * max(1.0, r.abs().max().item()), rtol=1e-4)
    assert counter.frame_count == 1


@pytest.mark.parametrize('compiled', [False, True], ids=['eager', 'compiled'])
def test_fp32_output_makes_flat_attention_gradients_exact(compiled):
    """``o_fp32``: the backward's ``delta = rowsum(dO * O)`` equals ``sum_j P_ij dP_ij`` of the backward's own P.

    Flat attention (tiny scale, 64 keys of similar weight) over values with a common offset is where
    ``dS = P (dP - delta)`` cancels (every dP_ij ~ delta_i). Any error of delta_i is then the same for every key of
    row i, so it does not average out where gradients are summed over tokens: ``sum_j dK_j`` (a key bias'
    gradient) is exactly 0 (softmax ignores a shift shared by all keys). With fp16 O delta carries O's rounding;
    with fp32 O but P rounded to fp16 before ``P V`` (measured: 26x the fp16 twin's ``sum_j dK_j``) it carries P's;
    the kernel's split ``P = hi + lo`` removes both (fp64 reference; the twin is the bar).
    """
    from sparse_ops import patterns
    from sparse_ops.block_sparse import block_sparse_attention
    from sparse_ops.block_sparse_fwd import default_config
    cfg = default_config(16, torch.device(DEVICE))
    p = patterns.hilbert_window_pattern(128, 64, False, cfg.block_m, cfg.block_n, DEVICE)
    g = torch.Generator().manual_seed(5)
    q, k, v, do = (torch.randn(2, 2, 128, 16, generator=g) for _ in range(4))
    v = v + 32.0
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = reference.hilbert_window_attention(q64, k64, v64, 64, scale=0.02)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    fn = block_sparse_attention
    if compiled:
        fn = torch.compile(block_sparse_attention, backend='aot_eager', fullgraph=True)

    def errors(grads):
        err = max(((gr.double().cpu() - r).abs().max() / r.abs().max()).item()
                  for gr, r in zip(grads[:2], ref_grads[:2]))          # dv does not use delta
        return err, grads[1].double().cpu().sum(2).abs().max().item()   # sum_j dK_j, exactly 0

    qt, kt, vt = (t.half().requires_grad_() for t in (q, k, v))
    twin = reference.hilbert_window_attention(qt, kt, vt, 64, scale=0.02)
    twin_err, twin_ksum = errors(torch.autograd.grad(twin, (qt, kt, vt), do.half()))
    outs, errs, ksums = [], [], []
    for o_fp32 in (False, True):
        qh, kh, vh = (t.half().to(DEVICE).requires_grad_() for t in (q, k, v))
        out = fn(qh, kh, vh, p, 0.02, None, cfg, o_fp32)
        assert out.dtype == torch.float16
        err, ksum = errors(torch.autograd.grad(out, (qh, kh, vh), do.half().to(DEVICE)))
        outs.append((out.double().cpu() - ref).abs().max().item())
        errs.append(err)
        ksums.append(ksum)
    # fp32 P V: one rounding of O either way (the fp32-O error was 1.012x the other's on an H200, 0.98x on CPU)
    assert outs[1] <= outs[0] * 1.25, outs
    assert errs[1] * 2 < errs[0] and errs[1] < 1.5 * twin_err, (errs, twin_err)
    assert ksums[1] < 3 * twin_ksum < ksums[0], (ksums, twin_ksum)


# ------------------------------------------------------------------------------------------------------------
# seeded random sweep: quick subset by default, >= 500 cases with SPARSE_OPS_SWEEP=1
# ------------------------------------------------------------------------------------------------------------
def _sweep_cases(n_cases, seed=1234):
    rng = random.Random(seed)
    dtypes = [torch.float32, torch.float16]
    cases = []
    for i in range(n_cases):
        name = rng.choice(['hilbert_window_attention', 'hilbert_slide_attention',
                           'hilbert_neighborhood_attention_1d', 'neighborhood_attention_2d',
                           'bilevel_routing_attention'])
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        b, heads, d = rng.randint(1, 2), rng.randint(1, 2), rng.choice([16, 32])
        rpb_side = 0
        if name in ('neighborhood_attention_2d', 'bilevel_routing_attention'):
            shape = (b, heads, h, w, d)
            if name == 'neighborhood_attention_2d':
                k = rng.choice([1, 3, 5, 7])
                kw = dict(kernel_size=k, dilation=rng.randint(1, 3))
                rpb_side = 2 * k - 1 if rng.random() < 0.5 else 0
            else:
                n_win = rng.randint(1, 4)
                kw = dict(n_win=n_win, topk=rng.randint(1, n_win * n_win))
        else:
            shape = (b, heads, h * w, d)
            size = rng.randint(1, 24)
            kw = {'hilbert_window_attention': dict(window=size, shift=rng.random() < 0.5),
                  'hilbert_slide_attention': dict(window=size),
                  'hilbert_neighborhood_attention_1d': dict(kernel=size)}[name]
            if rng.random() < 0.4:
                kw['hw'] = (h, w)
                rpb_side = rng.choice([3, 5, 7])
        config = rng.choice(CONFIGS)
        cases.append(pytest.param(name, shape, kw, rng.choice(dtypes), config, rpb_side, i, id=f'case{i}'))
    return cases


SWEEP = _sweep_cases(600 if os.environ.get('SPARSE_OPS_SWEEP') == '1' else 8)


@pytest.mark.parametrize('name,shape,kwargs,dtype,config,rpb_side,seed', SWEEP)
def test_random_sweep(name, shape, kwargs, dtype, config, rpb_side, seed):
    check_case(name, shape, kwargs, dtype=dtype, config=config, rpb_side=rpb_side, seed=seed)


@pytest.mark.parametrize('layout', ['contiguous', 'qkv-permuted'])
def test_registered_op_opcheck(layout):
    """torch.library.opcheck on the registered forward op (schema, fake impl, autograd registration).

    'qkv-permuted' feeds views of one (B, N, 3, heads, D) tensor, as the backbones do: the fake kernel must
    report the same (contiguous) output strides as the real op, or torch.compile of a backbone fails.
    """
    from sparse_ops import patterns
    from sparse_ops.block_sparse_fwd import default_config
    cfg = default_config(16, torch.device(DEVICE))
    p = patterns.hilbert_window_pattern(40, 8, True, cfg.block_m, cfg.block_n, DEVICE, hw=(5, 8))
    if layout == 'contiguous':
        q, k, v = (torch.randn(1, 2, 40, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    else:
        qkv = torch.randn(1, 40, 3, 2, 16, device=DEVICE).permute(2, 0, 3, 1, 4)
        q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(0))
        assert not q.is_contiguous()
    rpb = torch.randn(2, 5, 5, device=DEVICE, requires_grad=True)
    args = (q, k, v, p.kv_num, p.kv_idx, p.q_num, p.q_idx, p.qwin, p.tok, p.route, rpb, p.rows, 0.25,
            p.mask_mode, p.n_groups, cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, layout != 'contiguous')
    torch.library.opcheck(torch.ops.sparse_ops.block_sparse_attention_fwd.default, args,
                          test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))


@pytest.mark.parametrize('poison', [False, True], ids=['finite', 'nan-in-v'])
def test_fp32_output_and_its_cast_come_from_one_launch(poison):
    """``block_sparse_fwd(..., o_dtype=fp32, cast=True)``: the kernel's second output is exactly the fp32 o rounded to
    q's dtype, in o's layout (heads-last buffer), including the tiles the exact NaN pass rewrites; without ``cast``
    the third value is o itself. (Outputs start NaN-poisoned, so a tile that a pass forgets shows.)"""
    from sparse_ops.block_sparse_fwd import block_sparse_fwd
    g = torch.Generator().manual_seed(4)
    b, h, hh, ww, d = 2, 2, 12, 10, 16
    q, k, v = (torch.randn(b, h, hh * ww, d, generator=g).to(DEVICE, torch.float16) for _ in range(3))
    if poison:
        v[1, 0, 37, 3] = float('nan')
    p, cfg = triton_api._routing_plan((b, h, hh, ww, d), q.device, 3, 2,
                                      lambda layout: routing.route_regions(q.view(b, h, hh, ww, d),
                                                                           k.view(b, h, hh, ww, d), 3, 2, layout),
                                      None)
    args = (q, k, v, p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, None, p.rows, d ** -0.5, p.mask_mode, p.n_groups,
            cfg, torch.float32)
    o, lse, out = block_sparse_fwd(*args, heads_last=True, cast=True)
    assert o.dtype == torch.float32 and out.dtype == q.dtype and out.stride() == o.stride()
    torch.testing.assert_close(out, o.to(q.dtype), rtol=0, atol=0, equal_nan=True)
    assert bool(torch.isnan(o).any()) == poison and not torch.isnan(o).all()
    o2, _, same = block_sparse_fwd(*args, heads_last=True)
    assert same is o2
    torch.testing.assert_close(o2, o, rtol=0, atol=0, equal_nan=True)
