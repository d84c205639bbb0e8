"""``sparse_ops.depthwise_conv2d``: the twin against a direct sum, the Triton kernels (interpreter on CPU, the GPU at
BiFormer-S shapes) against the twin, outputs and the gradients of x, weight, bias and residual; argument errors."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import sparse_ops
from sparse_ops import dwconv as dispatcher
from sparse_ops.reference.dwconv import depthwise_conv2d_nhwc as twin

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
needs_kernels = pytest.mark.skipif(DEVICE == 'cpu' and os.environ.get('TRITON_INTERPRET') != '1',
                                   reason='needs CUDA or TRITON_INTERPRET=1')
ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
LEAVES = ('x', 'weight', 'bias', 'residual')


def _kernels():
    from sparse_ops.kernels import dwconv_triton
    return dwconv_triton


def make_inputs(b, h, w, c, k, dtype, bias=True, residual=True, res_dtype=None, sliced=False, device=DEVICE,
                seed=0):
    """Random (non-symmetric) inputs; ``sliced``: x is the V slice ``qkv[..., 2C:]`` of a ``(B, H, W, 3C)`` tensor
    and the residual a channel slice of a ``(B, H, W, 2C)`` one (both read in place)."""
    g = torch.Generator().manual_seed(seed)
    if sliced:
        x = torch.randn(b, h, w, 3 * c, generator=g)[..., 2 * c:]
    else:
        x = torch.randn(b, h, w, c, generator=g)
    args = dict(x=x.to(device, dtype), weight=torch.randn(c, 1, k, k, generator=g).to(device),
                bias=torch.randn(c, generator=g).to(device) if bias else None, residual=None)
    if residual:
        r = torch.randn(b, h, w, 2 * c, generator=g)[..., :c] if sliced else torch.randn(b, h, w, c, generator=g)
        args['residual'] = r.to(device, res_dtype or dtype)
    return args


def run(args, backend, out_dtype=None, grads=LEAVES, dy_seed=1, config=None):
    """Output and the gradients of the leaves named in ``grads`` (None for the others) of the loss sum(y * g)."""
    leaves, made = {}, {}
    for name, t in args.items():
        if t is None or id(t) in made:   # the same tensor twice (residual = x): one leaf
            leaves[name] = made.get(id(t))
            continue
        leaf = t.detach().clone() if t.is_contiguous() else t.detach()   # keep a slice a slice
        leaves[name] = made[id(t)] = leaf.requires_grad_(name in grads)
    if config is not None:
        y = _kernels().depthwise_conv2d_nhwc(*leaves.values(), out_dtype=out_dtype, config=config)
    else:
        y = sparse_ops.depthwise_conv2d(*leaves.values(), out_dtype=out_dtype, backend=backend)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(y.device)
    if any(t is not None and t.requires_grad for t in leaves.values()):
        (y.float() * dy).sum().backward()
    return y, {n: (t.grad if t is not None and t.requires_grad else None) for n, t in leaves.items()}


def assert_close_rel(got, want, rel, what):
    """max |got - want| <= rel * max(max |want|, 1)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    err = (got.float() - want.float()).abs().max().item()
    scale = max(want.float().abs().max().item(), 1.0)
    assert err <= rel * scale, f'{what}: max error {err:.3g} > {rel:.3g} * {scale:.3g}'


def _rel(dtype) -> float:
    """Tolerance of a result rounded to dtype from the same fp32 value summed in another order: 2 ulps (fp32: the
    few-ulp spread of a sum of up to ~k*k*B*H*W terms at these small shapes)."""
    return 1e-5 if dtype == F32 else 2 * ULP[dtype]


def check(args, out_dtype=None, grads=LEAVES, config=None):
    y_tri, g_tri = run(args, 'triton', out_dtype, grads, config=config)
    y_ref, g_ref = run(args, 'torch', out_dtype, grads)
    want_dtype = out_dtype or (args['residual'].dtype if args['residual'] is not None else args['x'].dtype)
    assert y_tri.dtype == y_ref.dtype == want_dtype and y_tri.is_contiguous()
    assert_close_rel(y_tri, y_ref, _rel(want_dtype), 'y')
    for name in LEAVES:
        if g_ref[name] is None:
            assert g_tri[name] is None, name
            continue
        assert g_tri[name] is not None, name
        assert_close_rel(g_tri[name], g_ref[name], _rel(g_ref[name].dtype), f'd{name}')


# ----------------------------------------------------------------------------------------------------------------
# the twin: the contract itself
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('k', [1, 3, 5, 7])
def test_twin_is_the_documented_sum(k):
    """y[b, h, w, c] = sum_ij weight[c, 0, i, j] * x[b, h + i - k//2, w + j - k//2, c] + bias + residual, by
    explicit fp64 loops over the taps on a zero-padded map: orientation (correlation, not convolution), padding."""
    b, h, w, c, p = 2, 4, 6, 3, k // 2
    args = make_inputs(b, h, w, c, k, F32, device='cpu')
    x, wt, bias, res = (args[n].double() for n in LEAVES)
    xp = F.pad(x, (0, 0, p, p, p, p))
    want = bias + res
    for i in range(k):
        for j in range(k):
            want = want + wt[:, 0, i, j] * xp[:, i:i + h, j:j + w, :]
    got = twin(x, wt, bias, res)   # fp32 math, returned in x's dtype (fp64 here)
    assert got.dtype == torch.float64 and got.shape == (b, h, w, c)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_twin_dtypes_and_autocast():
    args = make_inputs(1, 3, 5, 4, 3, BF16, res_dtype=F32, device='cpu')
    assert twin(**args).dtype == F32                                     # the residual's dtype
    assert twin(args['x'], args['weight']).dtype == BF16                 # else x's
    assert twin(**args, out_dtype=F16).dtype == F16
    want = twin(args['x'].float(), args['weight'], args['bias'], args['residual'])
    with torch.autocast('cpu', torch.bfloat16):                          # fp32 math inside autocast too
        assert torch.equal(twin(**args), want)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels vs the twin (interpreter on CPU)
# ----------------------------------------------------------------------------------------------------------------
@needs_kernels
@pytest.mark.parametrize('shape', [(2, 1, 1, 12), (2, 2, 3, 12), (2, 7, 9, 12), (1, 5, 19, 40)],
                         ids=lambda s: 'B{}-{}x{}-C{}'.format(*s))
@pytest.mark.parametrize('k', [3, 5], ids=lambda k: f'k{k}')
@pytest.mark.parametrize('dtype', [F32, F16, BF16], ids=str)
def test_kernels_match_twin(shape, k, dtype):
    check(make_inputs(*shape, k, dtype))


@needs_kernels
@pytest.mark.parametrize('bias,residual', [(False, False), (True, False), (False, True)], ids=str)
@pytest.mark.parametrize('k', [1, 3, 7], ids=lambda k: f'k{k}')
def test_optional_bias_and_residual(bias, residual, k):
    check(make_inputs(2, 3, 5, 12, k, F32, bias=bias, residual=residual))


@needs_kernels
@pytest.mark.parametrize('dtype,k', [(F32, 5), (BF16, 5), (F16, 3)], ids=str)
def test_strided_channel_slice_of_qkv(dtype, k):
    """x = qkv[..., 2C:] of a (B, H, W, 3C) tensor, residual a slice too: read in place; the gradient of the whole
    qkv matches (zero outside the slice)."""
    b, h, w, c = 2, 5, 6, 12
    qkv = torch.randn(b, h, w, 3 * c, device=DEVICE).to(dtype)
    res = torch.randn(b, h, w, 2 * c, device=DEVICE)
    weight = torch.randn(c, 1, k, k, device=DEVICE)
    dy = torch.randn(b, h, w, c, device=DEVICE)
    outs = []
    for backend in ('triton', 'torch'):
        q, r, wt = (t.clone().requires_grad_() for t in (qkv, res, weight))
        x = q[..., 2 * c:]
        assert x.stride() == (h * w * 3 * c, w * 3 * c, 3 * c, 1)
        y = sparse_ops.depthwise_conv2d(x, wt, None, r[..., c:], out_dtype=dtype, backend=backend)
        (y.float() * dy).sum().backward()
        outs.append((y, q.grad, r.grad, wt.grad))
    for what, got, want in zip(('y', 'dqkv', 'dres', 'dweight'), *outs):
        assert_close_rel(got, want, _rel(want.dtype), what)
    assert (outs[0][1][..., :2 * c] == 0).all() and (outs[0][2][..., :c] == 0).all()


@needs_kernels
@pytest.mark.parametrize('x_dtype,res_dtype,out_dtype', [
    (BF16, F32, None),      # bf16 conv input, fp32 residual stream: fp32 out (the residual's dtype)
    (F16, F32, None),
    (F32, F32, BF16),       # explicit narrower output
    (BF16, BF16, F32),      # explicit wider output: dresidual is cast back to bf16
], ids=str)
def test_output_dtype_differs_from_x(x_dtype, res_dtype, out_dtype):
    check(make_inputs(2, 4, 7, 12, 3, x_dtype, res_dtype=res_dtype), out_dtype=out_dtype)


@needs_kernels
@pytest.mark.parametrize('grads', [('x',), ('weight',), ('bias',), ('residual',), ('x', 'residual'),
                                   ('weight', 'bias')], ids=lambda g: '+'.join(g))
def test_subsets_of_gradients(grads):
    """Each gradient alone or in pairs (the backward launches only the kernels it needs); the others stay None."""
    check(make_inputs(2, 6, 5, 12, 5, F32), grads=grads)


@needs_kernels
def test_orientation_of_an_asymmetric_kernel():
    """One tap at (i, j) = (0, 2) of a 3x3 kernel: y[h, w] = x[h - 1, w + 1] and dx[h, w] = dy[h + 1, w - 1]
    (exactly, zeros at the borders). A kernel that flipped the taps in either direction fails this."""
    b, h, w, c = 1, 4, 5, 3
    x = torch.randn(b, h, w, c, device=DEVICE, requires_grad=True)
    weight = torch.zeros(c, 1, 3, 3, device=DEVICE)
    weight[:, 0, 0, 2] = 1
    y = sparse_ops.depthwise_conv2d(x, weight, backend='triton')
    want = torch.zeros_like(y)
    want[:, 1:, :-1] = x.detach()[:, :-1, 1:]
    assert torch.equal(y, want)
    dy = torch.randn_like(y)
    y.backward(dy)
    want_dx = torch.zeros_like(dy)
    want_dx[:, :-1, 1:] = dy[:, 1:, :-1]
    assert torch.equal(x.grad, want_dx)


@needs_kernels
def test_unusual_upstream_gradients():
    """dy with transposed pixel strides (read in place) and an expanded dy with all strides 0 (made contiguous)."""
    args = make_inputs(2, 5, 5, 12, 3, F32)
    outs = []
    for backend in ('triton', 'torch'):
        leaves = [t.clone().requires_grad_() for t in args.values()]
        y = sparse_ops.depthwise_conv2d(*leaves, backend=backend)
        (y.transpose(1, 2) * torch.arange(300.0, device=DEVICE).view(1, 5, 5, 12).sin()).sum().backward()
        grads = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        y = sparse_ops.depthwise_conv2d(*leaves, backend=backend)
        y.sum().backward()
        outs.append(grads + [t.grad for t in leaves])
    for got, want in zip(*outs):
        assert_close_rel(got, want, 1e-5, 'grad')


@needs_kernels
@pytest.mark.parametrize('cfg', [(1, 16, 16, 1, 256, 1, 1), (4, 4, 32, 2, 4096, 2, 3), (8, 8, 16, 4, 1024, 4, 2),
                                 (2, 32, 16, 4, 16384, 8, 64)], ids=lambda c: '{}x{}-c{}-w{}-dw{}w{}p{}'.format(*c))
def test_tile_configs(cfg):
    """Explicit tiles (larger and smaller than the map, several channel blocks), 1 to 16 pixels per dweight step,
    1 to 3 pixel groups per dweight program."""
    check(make_inputs(1, 5, 11, 20, 3, F16, res_dtype=F32), config=_kernels().Config(*cfg))


@needs_kernels
def test_empty_batch():
    x = torch.zeros(0, 3, 4, 8, device=DEVICE, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(8, device=DEVICE, requires_grad=True)
    y = sparse_ops.depthwise_conv2d(x, w, b, backend='triton')
    y.sum().backward()
    assert y.shape == (0, 3, 4, 8) and x.grad.shape == x.shape and (w.grad == 0).all() and (b.grad == 0).all()


@needs_kernels
def test_saves_x_and_weight_without_copies():
    args = make_inputs(1, 3, 4, 8, 3, F32, sliced=True)
    x, w = args['x'].requires_grad_(), args['weight'].requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        sparse_ops.depthwise_conv2d(x, w, args['bias'], args['residual'], backend='triton')
    assert len(saved) == 2 and saved[0].data_ptr() == x.data_ptr() and saved[0].stride() == x.stride()
    assert saved[1] is w or saved[1].data_ptr() == w.data_ptr()


# ----------------------------------------------------------------------------------------------------------------
# GPU at BiFormer-S shapes (B = 2), bf16 vs the fp32 twin
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('h,w,c,k,sliced', [(256, 256, 64, 3, False), (256, 256, 64, 5, True),
                                            (64, 64, 256, 3, False), (32, 32, 512, 5, True)],
                         ids=lambda v: str(v))
def test_gpu_biformer_shapes(h, w, c, k, sliced):
    """bf16 x and residual (pos_embed: the residual is x itself; LCE: x is the V slice of qkv), fp32 weight and
    bias (parameters); reference: the twin on the same values in fp32, its output rounded to bf16 too (so both
    backward passes start from the same bf16 dy). Output and dx within 2 bf16 ulps of the largest value; dweight /
    dbias (fp32 sums of 131072 products in another order) within 1e-4."""
    args = make_inputs(2, h, w, c, k, BF16, sliced=sliced)
    if not sliced:
        args['residual'] = args['x']
    y_tri, g_tri = run(args, 'triton')
    ref = {n: t.float() for n, t in args.items() if n != 'residual'}
    ref['residual'] = ref['x'] if args['residual'] is args['x'] else args['residual'].float()
    y_ref, g_ref = run(ref, 'torch', out_dtype=BF16)
    assert y_tri.dtype == y_ref.dtype == BF16
    assert_close_rel(y_tri, y_ref, 2 * ULP[BF16], 'y')
    for name in LEAVES:
        if g_ref[name] is None:   # residual is x: its gradient is in dx
            continue
        rel = 2 * ULP[BF16] if name in ('x', 'residual') else 1e-4
        assert_close_rel(g_tri[name].float(), g_ref[name], rel, f'd{name}')


# ----------------------------------------------------------------------------------------------------------------
# arguments and backend choice
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,match', [
    (dict(x=torch.ones(2, 3, 4)), r'x must be a float16/bfloat16/float32 tensor \(B, H, W, C\)'),
    (dict(x=torch.ones(1, 3, 4, 8, dtype=torch.int32)), 'x must be a float16/bfloat16/float32'),
    (dict(x=torch.ones(1, 3, 8, 4).transpose(2, 3)), r'contiguous channel dim \(x.stride\(-1\) == 1\)'),
    (dict(x=torch.ones(1, 0, 4, 8)), 'H, W, C >= 1'),
    (dict(weight=torch.ones(8, 3, 3)), r'weight must be \(C, 1, k, k\) = \(8, 1, k, k\)'),
    (dict(weight=torch.ones(4, 1, 3, 3)), r'weight must be \(C, 1, k, k\).*got shape \(4, 1, 3, 3\)'),
    (dict(weight=torch.ones(8, 1, 3, 5)), r'got shape \(8, 1, 3, 5\)'),
    (dict(weight=torch.ones(8, 1, 4, 4)), 'kernel size k must be odd.*k=4'),
    (dict(weight=torch.ones(8, 1, 3, 3, dtype=torch.int64)), 'weight must be a float16/bfloat16/float32'),
    (dict(bias=torch.ones(7)), r'bias must be a float tensor \(8,\).*\(7,\)'),
    (dict(residual=torch.ones(1, 3, 5, 8)), r"residual must have x's shape \(1, 3, 4, 8\), got \(1, 3, 5, 8\)"),
    (dict(residual=torch.ones(1, 3, 8, 4).transpose(2, 3)), 'residual must have a contiguous channel dim'),
    (dict(residual=torch.ones(1, 3, 4, 8, dtype=torch.int64)), 'residual must be a float16/bfloat16/float32'),
    (dict(out_dtype=torch.int8), 'out_dtype must be one of'),
    (dict(backend='cuda'), "backend must be 'triton', 'torch' or None"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments(kwargs, match):
    args = dict(x=torch.ones(1, 3, 4, 8), weight=torch.ones(8, 1, 3, 3), bias=None, residual=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sparse_ops.depthwise_conv2d(**args)


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(ValueError, match="backend='triton' cannot run: CPU tensors need TRITON_INTERPRET=1"):
        sparse_ops.depthwise_conv2d(torch.ones(1, 2, 2, 4), torch.ones(4, 1, 3, 3), backend='triton')


def test_cpu_default_is_the_twin(monkeypatch):
    """backend=None on CPU takes the twin even under TRITON_INTERPRET=1; use_backend('triton') switches."""
    args = make_inputs(1, 3, 4, 8, 3, F32, device='cpu')
    assert torch.equal(sparse_ops.depthwise_conv2d(**args), twin(**args))
    called = []
    monkeypatch.setattr(dispatcher._twin, 'depthwise_conv2d_nhwc', lambda *a: called.append('twin'))
    sparse_ops.depthwise_conv2d(**args)
    assert called == ['twin']
    with sparse_ops.use_backend('torch'):
        sparse_ops.depthwise_conv2d(**args)
    assert called == ['twin', 'twin']
    if os.environ.get('TRITON_INTERPRET') == '1':
        with sparse_ops.use_backend('triton'):
            y = sparse_ops.depthwise_conv2d(**args)
        assert called == ['twin', 'twin'] and y.shape == (1, 3, 4, 8)
