"""``sparse_ops.layer_norm``: the Triton kernels (interpreter on CPU, the GPU at real shapes) against the twin
(fp32 ``F.layer_norm`` + cast), outputs and the gradients of x, weight and bias; argument errors; ``PreNorm``."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import sparse_ops
from backbones.layers import PreNorm

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
needs_kernels = pytest.mark.skipif(DEVICE == 'cpu' and os.environ.get('TRITON_INTERPRET') != '1',
                                   reason='needs CUDA or TRITON_INTERPRET=1')
ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def _run(x, weight, bias, eps, out_dtype, backend, seed=1):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    y = sparse_ops.layer_norm(*leaves, eps=eps, out_dtype=out_dtype, backend=backend)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device)
    (y.float() * g).sum().backward()
    return y, [t.grad for t in leaves if t is not None]


def check(shape, x_dtype, out_dtype, affine=(True, True), eps=1e-5, device=DEVICE, transpose=False):
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=g) + 1).to(device=device, dtype=x_dtype)
    if transpose:  # non-contiguous rows: x is the transpose of a contiguous tensor
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    c = shape[-1]
    weight = (1 + torch.randn(c, generator=g)).to(device) if affine[0] else None
    bias = torch.randn(c, generator=g).to(device) if affine[1] else None
    y_tri, g_tri = _run(x, weight, bias, eps, out_dtype, 'triton')
    y_ref, g_ref = _run(x, weight, bias, eps, out_dtype, 'torch')
    assert y_tri.dtype == y_ref.dtype == out_dtype and y_tri.shape == x.shape
    # the rows' statistics are summed in a different order: one rounding step of the output dtype apart (fp32: the
    # few-ulp error of mean and rstd, amplified by the cancellation in x - mean)
    tol = max(2 * ULP[out_dtype], 4e-6) * y_ref.float().abs().clamp(min=1)
    assert ((y_tri.float() - y_ref.float()).abs() <= tol).all(), (y_tri.float() - y_ref.float()).abs().max()
    assert len(g_tri) == len(g_ref) == 1 + sum(affine)
    for got, want in zip(g_tri, g_ref):
        assert got.dtype == want.dtype and got.shape == want.shape
        # (C = 1: dweight is exactly 0 here, rounding noise of ~1e-5 in the twin)
        err = (got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1)
        if out_dtype.itemsize < x_dtype.itemsize:   # the kernel saved xhat in out_dtype: one rounding of it
            assert err < ULP[out_dtype], err
        else:
            assert err < (5e-5 if x_dtype == torch.float32 else 2e-3), err


@needs_kernels
@pytest.mark.parametrize('shape,x_dtype,out_dtype', [
    ((5, 7, 96), torch.float32, torch.float16),
    ((130, 13), torch.float32, torch.float32),
    ((3, 1), torch.float32, torch.float32),
    ((67, 384), torch.float32, torch.bfloat16),
    ((2, 9, 64), torch.float16, torch.float32),
], ids=str)
def test_kernels_match_twin(shape, x_dtype, out_dtype):
    check(shape, x_dtype, out_dtype)


@needs_kernels
@pytest.mark.parametrize('affine', [(False, False), (True, False), (False, True)], ids=str)
def test_optional_weight_and_bias(affine):
    check((33, 40), torch.float32, torch.float16, affine=affine, eps=1e-6)


@needs_kernels
@pytest.mark.parametrize('out_dtype', [torch.bfloat16, torch.float32], ids=str)
def test_narrower_output_saves_the_normalised_rows_in_that_dtype(out_dtype):
    """fp32 x with a bf16 output (a pre-norm under autocast): the backward keeps xhat in bf16 (half of x's bytes),
    not x; with an fp32 output it keeps x itself (no copy)."""
    x = torch.randn(9, 64, device=DEVICE, requires_grad=True)
    weight, bias = torch.ones(64, device=DEVICE), torch.zeros(64, device=DEVICE)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        sparse_ops.layer_norm(x, weight, bias, out_dtype=out_dtype, backend='triton')
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].dtype == out_dtype
    if out_dtype == torch.float32:
        assert big[0].data_ptr() == x.data_ptr()
    else:
        xhat = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(big[0].float(), xhat.detach(), atol=1e-2, rtol=1e-2)


@needs_kernels
def test_strided_rows_and_empty_input():
    check((48, 24), torch.float32, torch.float32, transpose=True)
    x = torch.zeros(0, 8, device=DEVICE, requires_grad=True)
    w = torch.ones(8, device=DEVICE, requires_grad=True)
    y = sparse_ops.layer_norm(x, w, None, backend='triton')
    y.sum().backward()
    assert y.shape == (0, 8) and x.grad.shape == (0, 8) and (w.grad == 0).all()


@needs_kernels
@pytest.mark.parametrize('x_is_xhat', [False, True])
def test_backward_kernel_adds_the_residual_gradient(x_is_xhat):
    """``layer_norm_bwd(..., residual=r)`` writes ``dx + r`` (the fused block's residual-stream gradient): equal
    to the kernel without it plus r, with the same dweight / dbias sums."""
    from sparse_ops import norm_triton
    x = torch.randn(37, 48, device=DEVICE)
    w = torch.randn(48, device=DEVICE)
    y, mean, rstd, xhat = norm_triton.layer_norm_fwd(x, w, None, 1e-5, torch.float16 if x_is_xhat else x.dtype,
                                                     save_xhat=x_is_xhat)
    dy, r = torch.randn(37, 48, device=DEVICE).to(y.dtype), torch.randn(37, 48, device=DEVICE)
    saved = xhat if x_is_xhat else x
    dx, sums = norm_triton.layer_norm_bwd(dy, saved, w, mean, rstd, torch.float32, x_is_xhat)
    dx_r, sums_r = norm_triton.layer_norm_bwd(dy, saved, w, mean, rstd, torch.float32, x_is_xhat, r)
    torch.testing.assert_close(dx_r, dx + r, rtol=1e-6, atol=1e-6)
    assert torch.equal(sums, sums_r)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('shape', [(2, 65536, 96), (2, 4096, 384), (2, 1024, 768), (1, 97, 515)], ids=str)
@pytest.mark.parametrize('out_dtype', [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gpu_real_shapes(shape, out_dtype):
    check(shape, torch.float32, out_dtype)


@pytest.mark.parametrize('kwargs,match', [
    (dict(x=torch.ones(2, 3, dtype=torch.int64)), 'x must be a float16/bfloat16/float32'),
    (dict(weight=torch.ones(4)), r'weight must be \(3,\)'),
    (dict(bias=torch.ones(3, 1)), r'bias must be \(3,\)'),
    (dict(eps=0.0), 'eps must be > 0'),
    (dict(out_dtype=torch.int8), 'out_dtype must be one of'),
    (dict(backend='cuda'), "backend must be 'triton', 'torch' or None"),
])
def test_bad_arguments(kwargs, match):
    args = dict(x=torch.ones(2, 3), weight=None, bias=None, eps=1e-5, out_dtype=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sparse_ops.layer_norm(**args)


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(ValueError, match='TRITON_INTERPRET=1'):
        sparse_ops.layer_norm(torch.ones(2, 3), backend='triton')


def test_cpu_default_is_the_twin_and_prenorm_is_layernorm():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 32)
    norm = PreNorm(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    assert isinstance(norm, torch.nn.LayerNorm) and set(norm.state_dict()) == {'weight', 'bias'}
    want = F.layer_norm(x, (32,), norm.weight, norm.bias, 1e-6)
    assert torch.equal(norm(x), want)
    assert torch.equal(sparse_ops.layer_norm(x, norm.weight, norm.bias, 1e-6), want)
    assert sparse_ops.layer_norm(x, out_dtype=torch.bfloat16).dtype == torch.bfloat16
