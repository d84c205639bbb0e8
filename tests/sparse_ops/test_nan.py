"""NaN and inf propagation (docs/design.md, "NaN and inf"), equal on the twin and the Triton path: on the GPU when
one is present, otherwise under the interpreter.

One non-finite value at token t of q, k or v; A = the queries that attend t (A = {t} for q), P(A) = the keys that
some query of A attends. Then the output rows of A are NaN (every channel) and every other row is finite; with a
finite upstream gradient dq is NaN (every channel) on the rows of A, dk and dv on the rows of P(A), the bias
gradient on the cells that a pair (i in A, j in P(A)) reads, and everything else is finite. Who attends whom is
computed here from the patterns' definitions (ranges, sub-grid windows, the routing of the inputs as given, NaN
included) and checked against the op itself with a one-hot v.

The ops' inputs live on ``DEV`` (random values drawn from a CPU generator, then moved, so both devices see the same
numbers); the oracles (pattern masks, row sets, bias cells) are built on the CPU, and op outputs are brought there to
be compared with them.
"""
from __future__ import annotations

import pytest
import torch

import sparse_ops as so
from sparse_ops.hilbert import hilbert_coords
from sparse_ops.reference.hilbert_1d import band_ranges, neighborhood_1d_ranges, window_ranges
from sparse_ops.reference.neighborhood_2d import axis_neighbors
from sparse_ops.routing import route_regions

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'   # the ops' device (CPU: the conftest sets TRITON_INTERPRET=1)
D = 16  # a head dim the Triton core takes
NAN, INF = float('nan'), float('inf')

CASES = {  # name: (function, q shape without the head dim, positional arguments, tokens to poison)
    'window': (so.hilbert_window_attention, (1, 1, 45), (7,), (5, 44)),
    'window-shift': (so.hilbert_window_attention, (1, 1, 45), (7, True), (3, 40)),
    'slide': (so.hilbert_slide_attention, (1, 1, 45), (7,), (0, 22)),
    'na1d': (so.hilbert_neighborhood_attention_1d, (1, 1, 45), (7,), (1, 30)),
    'na2d': (so.neighborhood_attention_2d, (1, 1, 9, 7), (3, 2), (0, 31)),
    'routing': (so.bilevel_routing_attention, (1, 1, 8, 8), (4, 2), (9, 63)),
}
BACKENDS = ['torch', 'triton']
SLOW = pytest.mark.slow
pytestmark = pytest.mark.filterwarnings('ignore:invalid value encountered:RuntimeWarning')  # numpy, interpreter


def _inputs(shape, seed=1, device=DEV):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, D, generator=g).to(device) for _ in range(3)]


def _pattern(name, q, k, shape=None, args=None):
    """(N, N) bool on the CPU, [i, j] = query i attends key j, from the pattern's definition (q, k: the routing's
    inputs, batch 0, on any device; shape, args: CASES[name]'s by default)."""
    shape, args = shape or CASES[name][1], args or CASES[name][2]
    if name == 'na2d':
        (h, w), (kernel, dil) = shape[2:], args

        def axis(length):  # [p, p'] = p' lies in p's window along this axis
            lo, size = axis_neighbors(length, kernel, dil)
            p = torch.arange(length)
            sub = torch.div(p, dil, rounding_mode='floor')
            same = p[:, None] % dil == p[None] % dil
            return same & (sub[None] >= lo[:, None]) & (sub[None] < (lo + size)[:, None])
        ay, ax = axis(h), axis(w)
        return (ay[:, None, :, None] & ax[None, :, None, :]).reshape(h * w, h * w)
    if name == 'routing':
        (h, w), (n_win, topk) = shape[2:], args
        idx = route_regions(q, k, n_win, topk)[0].cpu()                        # (R, topk)
        rh, rw = -(-h // n_win), -(-w // n_win)
        region = (torch.arange(h)[:, None] // rh * n_win + torch.arange(w)[None] // rw).reshape(-1)
        return (idx[region][:, None, :] == region[None, :, None]).any(-1)
    n = shape[2]
    lo, hi = {'window': lambda: window_ranges(n, *args), 'window-shift': lambda: window_ranges(n, *args),
              'slide': lambda: band_ranges(n, *args), 'na1d': lambda: neighborhood_1d_ranges(n, *args)}[name]()
    j = torch.arange(n)
    return (j[None] >= lo[:, None]) & (j[None] <= hi[:, None])


def _expected(attends, which, t):
    """(A, P(A)) as (N,) bool: the rows whose output / dq are NaN, the rows whose dk / dv are NaN."""
    a = torch.arange(attends.shape[0]) == t if which == 'q' else attends[:, t]
    return a, attends[a].any(0)


def _bad(x):
    """(N,) bool on the CPU (compared with the oracles): rows (flattened spatial dims) holding a NaN or an inf."""
    return ~torch.isfinite(x).reshape(-1, D).all(-1).cpu()


def _nan(x):
    """(N,) bool on the CPU: rows that are NaN in every channel."""
    return torch.isnan(x).reshape(-1, D).all(-1).cpu()


def _run(fn, q, k, v, args, backend, **kw):
    leaves = [x.clone().requires_grad_() for x in (q, k, v)] + ([kw['rpb']] if 'rpb' in kw else [])
    out = fn(*leaves[:3], *args, backend=backend, **kw)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.device)
    grads = torch.autograd.grad(out, leaves, dout)
    return out.detach(), grads


def _poisoned(name, which, t, value=NAN):
    q, k, v = _inputs(CASES[name][1])
    {'q': q, 'k': k, 'v': v}[which].view(-1, D)[t, 3] = value
    return q, k, v


def _check(name, which, t, out, grads, q, k):
    a, pa = _expected(_pattern(name, q, k), which, t)
    assert a.any() and pa.any()
    for label, x, want in (('out', out, a), ('dq', grads[0], a), ('dk', grads[1], pa), ('dv', grads[2], pa)):
        assert torch.equal(_bad(x), want), f'{name} {which}[{t}] {label}: non-finite rows {_bad(x).nonzero()[:, 0]}'
        assert torch.equal(_nan(x), want), f'{name} {which}[{t}] {label}: rows not NaN in every channel'


@pytest.mark.parametrize('token', [0, pytest.param(1, marks=SLOW)], ids=['t0', 't1'])
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('which', ['q', 'k', 'v'])
@pytest.mark.parametrize('name', list(CASES))
def test_nan_reaches_exactly_the_attending_queries(name, which, backend, token):
    """A NaN in q[t]: output and dq row t, dk / dv of t's keys. In k[t] or v[t]: the queries A that attend t, their
    keys P(A). Routing: a NaN in k[t] makes t's region NaN-affine to every query region, ranked first, so every
    query attends t (A = all); a NaN in q[t] makes t's query region route by index (all its affinities NaN)."""
    fn, _, args, tokens = CASES[name]
    t = tokens[token]
    q, k, v = _poisoned(name, which, t)
    out, grads = _run(fn, q, k, v, args, backend)
    _check(name, which, t, out, grads, q, k)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('which,value', [('q', INF), pytest.param('q', -INF, marks=SLOW),
                                         pytest.param('v', INF, marks=SLOW), ('v', -INF)])
@pytest.mark.parametrize('name', ['window', 'na2d', 'routing'])
def test_inf_in_q_or_v_acts_as_nan(name, which, value, backend):
    """An inf in a q or v row is read like a NaN (the row counts as non-finite): the same NaN sets."""
    fn, _, args, tokens = CASES[name]
    t = tokens[0]
    q, k, v = _poisoned(name, which, t, value)
    out, grads = _run(fn, q, k, v, args, backend)
    _check(name, which, t, out, grads, q, k)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('name', ['window', 'slide', 'na2d'])
def test_inf_in_k_stays_with_the_attending_queries(name, backend):
    """An inf in k[t]: the twin makes the rows of A NaN; the Triton path does in every query tile where the inf
    gives some row a NaN and elsewhere may let t act as a masked key (logit -inf). Rows outside A are finite and
    equal to the result without the inf on both."""
    fn, _, args, tokens = CASES[name]
    t = tokens[1]
    q, k, v = _poisoned(name, 'k', t, INF)
    a, _ = _expected(_pattern(name, q, k), 'k', t)
    out = fn(q, k, v, *args, backend=backend)
    clean = fn(*_inputs(CASES[name][1]), *args, backend=backend)
    out, clean = out.cpu(), clean.cpu()     # indexed with the CPU row set a
    assert not (_bad(out) & ~a).any()
    torch.testing.assert_close(out.reshape(-1, D)[~a], clean.reshape(-1, D)[~a], rtol=0, atol=0)
    if backend == 'torch':
        assert torch.equal(_nan(out), a)


RPB_CASES = {  # name: (rpb side, extra keyword arguments)
    'window': (13, dict(hw=(5, 9))),
    'na2d': (5, {}),
}


def _rpb_cells(name, side, a, attends):
    """(side * side,) bool: the bias cells read by a pair (i in A, j attended by i)."""
    _, shape, args, _ = CASES[name]
    if name == 'na2d':
        h, w = shape[2:]
        dil = args[1]
        yx = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij'), -1).reshape(-1, 2)
        off = torch.div(yx[None] - yx[:, None], dil, rounding_mode='floor')   # sub-grid units (same residue)
    else:
        yx = hilbert_coords(*RPB_CASES[name][1]['hw']).long()
        off = yx[None] - yx[:, None]
    r1 = (side - 1) // 2
    cell = (off.clamp(-r1, r1) + r1) @ torch.tensor([side, 1])               # (N, N): [i, j] cell of the pair
    hit = torch.zeros(side * side, dtype=torch.bool)
    hit[cell[a[:, None] & attends]] = True
    return hit


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('which', ['q', 'v'])
@pytest.mark.parametrize('name', list(RPB_CASES))
def test_nan_with_position_bias(name, which, backend):
    """With a relative position bias the same row sets, and drpb is NaN exactly on the cells of A's pairs."""
    fn, shape, args, tokens = CASES[name]
    side, kw = RPB_CASES[name]
    t = tokens[1]
    q, k, v = _poisoned(name, which, t)
    rpb = torch.randn(1, side, side, generator=torch.Generator().manual_seed(3)).to(DEV).requires_grad_()
    out, grads = _run(fn, q, k, v, args, backend, rpb=rpb, **kw)
    _check(name, which, t, out, grads, q, k)
    attends = _pattern(name, q, k)
    a, _ = _expected(attends, which, t)
    bad_cells = ~torch.isfinite(grads[3]).reshape(-1).cpu()
    assert torch.equal(bad_cells, _rpb_cells(name, side, a, attends))


@pytest.mark.parametrize('config', [pytest.param((16, 32), marks=SLOW), pytest.param((32, 16), marks=SLOW),
                                    (32, 32)], ids=lambda c: f'm{c[0]}-n{c[1]}')
@pytest.mark.parametrize('name', ['slide', 'na2d', 'routing'])
def test_triton_tiles(name, config):
    """Larger query / key tiles (more queries per tile that do not attend the NaN token): the same sets."""
    from sparse_ops import triton_api
    from sparse_ops.block_sparse_fwd import Config
    fn, _, args, tokens = CASES[name]
    kern = getattr(triton_api, fn.__name__)
    cfg = Config(*config, 1, 1)
    for which in 'qkv':
        t = tokens[1]
        q, k, v = _poisoned(name, which, t)
        out, grads = _run(lambda *a, backend, **kw: kern(*a, config=cfg, **kw), q, k, v, args, 'triton')
        _check(name, which, t, out, grads, q, k)


@pytest.mark.parametrize('chunk', [1, pytest.param(2, marks=SLOW)])
def test_triton_split_dkdv(monkeypatch, chunk):
    """Routing's split dK/dV pass (chunks of a key block's list summed afterwards): a NaN in one chunk poisons
    the key's sum, other keys stay finite."""
    import sparse_ops.block_sparse_bwd as bsb
    default, used = bsb.split_chunk, []
    monkeypatch.setattr(bsb, 'split_chunk', lambda *a: used.append(default(*a[:4], chunk=chunk)) or used[-1])
    fn, _, args, tokens = CASES['routing']
    for which in 'qv':
        q, k, v = _poisoned('routing', which, tokens[0])
        out, grads = _run(fn, q, k, v, args, 'triton')
        _check('routing', which, tokens[0], out, grads, q, k)
    assert used and all(used)


@pytest.mark.parametrize('which', [pytest.param(0, marks=SLOW), 1, pytest.param(2, marks=SLOW)],
                         ids='qkv'.__getitem__)
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('pattern,args', [pytest.param('na2d', (3, 2), marks=SLOW), ('routing', (4, 2))])
def test_packed_qkv_attention(pattern, args, backend, which):
    """``qkv_attention`` (the backbones' call; routing through ``route_qkv``'s Triton top-k on that path): the same
    sets on the fused projection, two heads."""
    name = pattern
    fn, shape, _, tokens = CASES[name]
    h, w = shape[2:]
    qkv = torch.randn(1, h, w, 6 * D, generator=torch.Generator().manual_seed(4)).to(DEV)
    t = tokens[1]
    qkv.view(h * w, 3, 2, D)[t, which, 1, 5] = NAN
    leaf = qkv.clone().requires_grad_()
    out = so.qkv_attention(leaf, 2, pattern, *args, backend=backend)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.device)
    dqkv, = torch.autograd.grad(out, leaf, dout)
    q, k, v = (qkv.view(1, h, w, 3, 2, D)[:, :, :, i].permute(0, 3, 1, 2, 4) for i in range(3))
    # routing is shared by the heads (means over all heads); head 0 holds no NaN, head 1 the poisoned token
    a, pa = _expected(_pattern(name, q, k), 'qkv'[which], t)
    heads_out = out.view(h * w, 2, D)
    assert torch.equal(_bad(heads_out[:, 1]), a) and not _bad(heads_out[:, 0]).any()
    grad = dqkv.view(h * w, 3, 2, D)
    for i, want in enumerate((a, pa, pa)):
        assert torch.equal(_bad(grad[:, i, 1]), want) and not _bad(grad[:, i, 0]).any()


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('name', list(CASES))
def test_pattern_oracle_matches_the_op(name, backend):
    """The oracle above is the op's pattern: with v the one-hot of token j (channel 0), output row i channel 0 is
    the weight of j for query i, > 0 exactly where i attends j."""
    fn, shape, args, tokens = CASES[name]
    q, k, _ = _inputs(shape)
    attends = _pattern(name, q, k)
    for j in tokens:
        v = torch.zeros(*shape, D, device=DEV)
        v.view(-1, D)[j, 0] = 1.0
        weight = fn(q, k, v, *args, backend=backend).reshape(-1, D)[:, 0].cpu()
        assert torch.equal(weight > 0, attends[:, j])


@pytest.mark.parametrize('name', ['window', 'na2d', 'routing'])
def test_twin_bookkeeping_adds_nothing_to_finite_inputs(monkeypatch, name):
    """The twin skips its NaN bookkeeping for finite CPU inputs; on CUDA and under torch.compile it always runs it.
    Forced on finite inputs it must give the same output and gradients (bias included). The skip exists only for CPU
    tensors, so the inputs stay on the CPU on every machine (the twin needs no interpreter; on CUDA inputs the patch
    would change nothing)."""
    from sparse_ops.reference import _common
    fn, shape, args, _ = CASES[name]
    side, kw = RPB_CASES.get(name, (0, {}))
    if side:
        kw = dict(kw, rpb=torch.randn(1, side, side, generator=torch.Generator().manual_seed(3)).requires_grad_())
    q, k, v = _inputs(shape, device='cpu')
    plain = _run(fn, q, k, v, args, 'torch', **kw)
    monkeypatch.setattr(_common, '_plain_path_applies', lambda *a: False)
    kept = _run(fn, q, k, v, args, 'torch', **kw)
    for a, b in zip((plain[0], *plain[1]), (kept[0], *kept[1])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _spy_launches(monkeypatch, seen):
    """Record ``(kernel, EXACT, flags after the launch)`` for every launch of the three attention kernels."""
    import sparse_ops.block_sparse_bwd as bsb
    import sparse_ops.block_sparse_fwd as bsf
    for module, attr in ((bsf, '_block_sparse_fwd_kernel'), (bsb, '_block_sparse_bwd_dq_kernel'),
                         (bsb, '_block_sparse_bwd_dkdv_kernel')):
        kernel = getattr(module, attr)

        class Spy:
            def __getitem__(self, grid, kernel=kernel, attr=attr):
                def launch(*args, **kw):
                    kernel[grid](*args, **kw)
                    seen.append((attr, kw['EXACT'], args[kernel.arg_names.index('FLAG')].clone()))
                return launch
        monkeypatch.setattr(module, attr, Spy())


@pytest.mark.parametrize('name', ['window', 'na2d', 'routing'])
def test_triton_exact_pass_launches_and_flags(monkeypatch, name):
    """Each kernel runs a first pass and an exact pass (3 extra launches per forward + backward, always: no host
    sync). On finite inputs the first forward and dQ passes flag no program, so every exact program returns at
    once; a NaN in v flags some program of each."""
    fn, shape, args, tokens = CASES[name]
    seen = []
    _spy_launches(monkeypatch, seen)
    _run(fn, *_inputs(shape), args, 'triton')
    kernels = ['_block_sparse_fwd_kernel', '_block_sparse_bwd_dq_kernel', '_block_sparse_bwd_dkdv_kernel']
    assert [(a, e) for a, e, _ in seen] == [(a, e) for a in kernels for e in (False, True)]
    first = [f for a, e, f in seen if not e and a != kernels[2]]     # dK/dV reads the dQ pass's flags
    assert len(first) == 2 and not any(f.any() for f in first)
    seen.clear()
    _run(fn, *_poisoned(name, 'v', tokens[0]), args, 'triton')
    assert all(f.any() for a, e, f in seen if not e and a != kernels[2])


GPU_CASES = {  # name: (function, q shape without the head dim, positional arguments, head dim): backbone stage 1
    'window': (so.hilbert_window_attention, (2, 4, 3136), (49,), 32),
    'slide': (so.hilbert_slide_attention, (2, 4, 3136), (49,), 32),
    'na2d': (so.neighborhood_attention_2d, (2, 4, 56, 56), (7, 1), 32),
    'routing': (so.bilevel_routing_attention, (2, 4, 56, 56), (7, 4), 64),
}


@pytest.mark.gpu
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('which', ['q', 'k', 'v'])
@pytest.mark.parametrize('name', list(GPU_CASES))
def test_gpu_bf16_backbone_shapes(name, which, backend):
    """bf16 on CUDA at a backbone's stage-1 shape (compiled kernels, default tiles): one NaN at token 1000 of batch 1,
    head 2 gives the rule's row sets there, every other (batch, head) stays finite, and the other rows match the
    run without the NaN (routing: batch 0's)."""
    fn, shape, args, d = GPU_CASES[name]
    g = torch.Generator().manual_seed(5)
    clean = [torch.randn(*shape, d, generator=g).to(DEV, torch.bfloat16) for _ in range(3)]
    dout = torch.randn(*shape, d, generator=g).to(DEV, torch.bfloat16)
    t = 1000
    poisoned = [x.clone() for x in clean]
    poisoned['qkv'.index(which)][1, 2].view(-1, d)[t, 3] = NAN
    results = []
    for inputs in (clean, poisoned):
        leaves = [x.clone().requires_grad_() for x in inputs]
        out = fn(*leaves, *args, backend=backend)
        results.append([out.detach(), *torch.autograd.grad(out, leaves, dout)])
    attends = _pattern(name, poisoned[0][1:2], poisoned[1][1:2], shape, args)
    a, pa = _expected(attends, which, t)
    n = attends.shape[0]
    for label, got, ref, want in zip(('out', 'dq', 'dk', 'dv'), results[1], results[0], (a, a, pa, pa)):
        rows = ~torch.isfinite(got).reshape(shape[0], shape[1], n, d).all(-1).cpu()
        expect = torch.zeros_like(rows)
        expect[1, 2] = want
        assert torch.equal(rows, expect), f'{name} {which} {backend} {label}'
        assert torch.isnan(got.reshape(shape[0], shape[1], n, d)[1, 2][want.to(DEV)]).all()
        keep = ~expect.to(DEV)
        if name == 'routing':
            keep[1] = False     # batch 1's routing (shared by its heads) changes with the NaN
        torch.testing.assert_close(got.reshape(-1, n, d)[keep.reshape(-1, n)].float(),
                                   ref.reshape(-1, n, d)[keep.reshape(-1, n)].float(), rtol=2e-2, atol=2e-2)
