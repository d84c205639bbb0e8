"""``sparse_ops.qkv_attention``: the pattern function on the split heads of a fused projection, heads merged.

Triton path (interpreter on CPU, fp32 / fp16; the GPU cases at backbone shapes in bf16) against the twin path
(split, ``sparse_ops.reference`` function, merge) in output and in the gradients of qkv and of the bias table; plus
one autograd node and one packed qkv gradient on the Triton path, and errors that name the problem.
"""
from __future__ import annotations

import os

import pytest
import torch

import sparse_ops
from sparse_ops.block_sparse import BlockSparseAttention

needs_kernels = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get('TRITON_INTERPRET') != '1',
                                   reason='needs CUDA or TRITON_INTERPRET=1')

# (pattern, spatial shape, heads, head dim, args, kwargs builder(heads, spatial) -> kwargs)
CASES = {
    'window-shift-rpb': ('window', (5, 7), 2, 16, (9,), lambda h, hw: dict(shift=True, hw=hw,
                                                                          rpb=0.5 * torch.randn(h, 5, 5))),
    'window': ('window', (6, 6), 1, 32, (16,), lambda h, hw: {}),
    'slide-rpb': ('slide', (4, 9), 2, 16, (7,), lambda h, hw: dict(hw=hw, rpb=0.5 * torch.randn(h, 7, 7))),
    'na1d': ('na1d', (3, 11), 2, 16, (9,), lambda h, hw: {}),
    'na2d-dil2-rpb': ('na2d', (9, 10), 2, 16, (3,), lambda h, hw: dict(dilation=2, rpb=0.5 * torch.randn(h, 5, 5))),
    'na2d': ('na2d', (7, 5), 1, 32, (5,), lambda h, hw: {}),
    'routing-ragged': ('routing', (7, 9), 2, 16, (3, 2), lambda h, hw: {}),
    'routing-scale': ('routing', (8, 8), 1, 32, (2, 1), lambda h, hw: dict(scale=0.05)),
}
_2D = ('na2d', 'routing')


def _run(pattern, qkv, heads, args, kwargs, backend, grad_out):
    qkv = qkv.detach().clone().requires_grad_()
    kwargs = {k: (v.detach().clone().requires_grad_() if k == 'rpb' else v) for k, v in kwargs.items()}
    out = sparse_ops.qkv_attention(qkv, heads, pattern, *args, backend=backend, **kwargs)
    out.backward(grad_out)
    return out, qkv.grad, (kwargs['rpb'].grad if 'rpb' in kwargs else None), out.grad_fn


def _tolerances(exact: bool) -> tuple[dict, dict]:
    """(output / qkv-gradient, bias-gradient) tolerances against the fp32 twin: fp32 dots are exact in the
    interpreter (``exact``), tf32 (Triton's fp32 dot) on a GPU, and fp16 / bf16 round."""
    if exact:
        return dict(atol=2e-4, rtol=2e-4), dict(atol=2e-4, rtol=2e-4)
    return dict(atol=2e-2, rtol=2e-2), dict(atol=5e-2, rtol=2e-2)


def _inputs(pattern, spatial, heads, dim, kwargs_of, device, dtype, batch=2):
    hw = spatial
    shape = (batch, hw[0] * hw[1]) if pattern not in _2D else (batch,) + tuple(hw)
    qkv = torch.randn(*shape, 3 * heads * dim, device=device).to(dtype)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs_of(heads, hw).items()}
    return qkv, kwargs


@needs_kernels
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize('case', list(CASES))
def test_triton_matches_twin_in_output_and_gradients(case, dtype):
    pattern, spatial, heads, dim, args, kwargs_of = CASES[case]
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    qkv, kwargs = _inputs(pattern, spatial, heads, dim, kwargs_of, device, dtype)
    grad_out = torch.randn(qkv.shape[:-1] + (heads * dim,), device=device).to(dtype)
    got = _run(pattern, qkv, heads, args, kwargs, 'triton', grad_out)
    # the twin in fp32 from the same (rounded) inputs
    want = _run(pattern, qkv.float(), heads, args, kwargs, 'torch', grad_out.float())
    assert type(got[3]).__name__ == BlockSparseAttention.__name__ + 'Backward'
    assert got[0].shape == qkv.shape[:-1] + (heads * dim,) and got[0].dtype == dtype and got[1].dtype == dtype
    tol, rpb_tol = _tolerances(dtype == torch.float32 and device == 'cpu')
    torch.testing.assert_close(got[0].float(), want[0], **tol)
    torch.testing.assert_close(got[1].float(), want[1], **tol)
    if got[2] is not None:
        torch.testing.assert_close(got[2], want[2], **rpb_tol)


@needs_kernels
def test_twin_path_equals_the_public_function_on_split_heads():
    """The twin path of ``qkv_attention`` is the public function on the split heads, merged (exactly)."""
    pattern, spatial, heads, dim, args, kwargs_of = CASES['na2d-dil2-rpb']
    qkv, kwargs = _inputs(pattern, spatial, heads, dim, kwargs_of, 'cpu', torch.float32)
    out = sparse_ops.qkv_attention(qkv, heads, pattern, *args, backend='torch', **kwargs)
    b, hh, ww, c3 = qkv.shape
    q, k, v = qkv.view(b, hh, ww, 3, heads, dim).permute(3, 0, 4, 1, 2, 5).unbind(0)
    ref = sparse_ops.neighborhood_attention_2d(q, k, v, *args, backend='torch', **kwargs)
    assert torch.equal(out, ref.permute(0, 2, 3, 1, 4).reshape(b, hh, ww, heads * dim))


@pytest.mark.parametrize('call,match', [
    (lambda: sparse_ops.qkv_attention(torch.zeros(1, 4, 12), 2, 'diamond', 3), 'pattern must be one of'),
    (lambda: sparse_ops.qkv_attention(torch.zeros(1, 4, 10), 2, 'window', 3), 'last dim of qkv'),
    (lambda: sparse_ops.qkv_attention(torch.zeros(1, 4, 12), 2, 'na2d', 3), r'needs qkv \(B, H, W, 3C\)'),
    (lambda: sparse_ops.qkv_attention(torch.zeros(1, 4, 12), 0, 'window', 3), 'num_heads must be'),
    (lambda: sparse_ops.qkv_attention(torch.zeros(1, 4, 12), 2, 'window', 0), 'window must be'),
    (lambda: sparse_ops.qkv_attention(torch.zeros(1, 4, 12), 2, 'window', 3, rpb=torch.zeros(2, 3, 3)), 'hw='),
], ids=['pattern', 'channels', 'dims', 'heads', 'window', 'rpb-without-hw'])
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize('case', [('window', (256, 256), 3, 49, dict(shift=True)), ('na1d', (64, 64), 12, 49, {}),
                                  ('na2d', (128, 128), 6, 7, dict(dilation=2))], ids=lambda c: c[0])
def test_gpu_backbone_shapes_bf16(case):
    """bf16 at the shapes of HWT-T stage 1 / HNT-T stage 3 / DiNAT-T stage 2 (1024² input, batch 2): the packed
    Triton node against the split-heads Triton call (same kernels: equal up to summation order of the bias
    gradient's atomics) and within bf16 error of the fp32 twin."""
    pattern, hw, heads, size, kw = case
    torch.manual_seed(0)
    dim, dev = 32, 'cuda'
    shape = (2, hw[0] * hw[1]) if pattern != 'na2d' else (2,) + hw
    qkv = torch.randn(*shape, 3 * heads * dim, device=dev).bfloat16()
    side = 2 * (7 if pattern != 'na2d' else size) - 1
    rpb = 0.5 * torch.randn(heads, side, side, device=dev)
    kw = dict(kw, rpb=rpb, **({'hw': hw} if pattern != 'na2d' else {}))
    grad_out = torch.randn(qkv.shape[:-1] + (heads * dim,), device=dev).bfloat16()
    got = _run(pattern, qkv, heads, (size,), kw, 'triton', grad_out)
    want = _run(pattern, qkv.float(), heads, (size,), kw, 'torch', grad_out.float())
    for g, w, name in zip(got[:3], want[:3], ('out', 'dqkv', 'drpb')):
        err = (g.float() - w).abs().max().item()
        assert err <= 0.02 * w.abs().max().item() + 1e-2, (name, err)


@pytest.mark.gpu
def test_gpu_routing_biformer_stage3_bf16():
    """bf16 routing at BiFormer-S stage 3 (1024² input, batch 2: 64x64 tokens, 8 heads of 32, n_win 16, topk 16,
    scale C^-0.5): the packed node against the fp32 twin on the same rounded qkv, within bf16 error."""
    torch.manual_seed(0)
    heads, dim, dev = 8, 32, 'cuda'
    qkv = torch.randn(2, 64, 64, 3 * heads * dim, device=dev).bfloat16()
    grad_out = torch.randn(2, 64, 64, heads * dim, device=dev).bfloat16()
    kw = dict(scale=(heads * dim) ** -0.5)
    got = _run('routing', qkv, heads, (16, 16), kw, 'triton', grad_out)
    want = _run('routing', qkv.float(), heads, (16, 16), kw, 'torch', grad_out.float())
    assert type(got[3]).__name__ == BlockSparseAttention.__name__ + 'Backward'
    for g, w, name in zip(got[:2], want[:2], ('out', 'dqkv')):
        err = (g.float() - w).abs().max().item()
        assert err <= 0.02 * w.abs().max().item() + 1e-2, (name, err)


@needs_kernels
@pytest.mark.parametrize('case', ['window-shift-rpb', 'na2d-dil2-rpb', 'routing-ragged'])
def test_one_function_serves_both_layouts(case):
    """The public function on separate q, k, v and ``qkv_attention`` on the packed qkv both run as ONE
    ``BlockSparseAttention`` node and equal the twin (fp32 interpreter: exact dots), output and gradients of q, k,
    v (= the packed qkv gradient) and of the bias table."""
    pattern, spatial, heads, dim, args, kwargs_of = CASES[case]
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    qkv, kwargs = _inputs(pattern, spatial, heads, dim, kwargs_of, device, torch.float32)
    fn = {'window': sparse_ops.hilbert_window_attention, 'na2d': sparse_ops.neighborhood_attention_2d,
          'routing': sparse_ops.bilevel_routing_attention}[pattern]
    grad_out = torch.randn(qkv.shape[:-1] + (heads * dim,), device=device)
    packed = _run(pattern, qkv, heads, args, kwargs, 'triton', grad_out)

    def separate(backend):
        leaf = qkv.detach().clone().requires_grad_()
        kw = {k: (v.detach().clone().requires_grad_() if k == 'rpb' else v) for k, v in kwargs.items()}
        q, k, v = (t.unflatten(2, spatial) if pattern in _2D else t
                   for t in sparse_ops.packed.split_heads(leaf, heads))
        out = fn(q, k, v, *args, backend=backend, **kw)                     # (B, heads, *S, D)
        out.movedim(1, -2).flatten(-2).backward(grad_out)
        return out.movedim(1, -2).flatten(-2), leaf.grad, kw['rpb'].grad if 'rpb' in kw else None, out.grad_fn

    split, twin = separate('triton'), separate('torch')
    tol, rpb_tol = _tolerances(device == 'cpu')
    for got in (packed, split):
        node = got[3] if pattern in ('window', 'slide', 'na1d') or got is packed else got[3].next_functions[0][0]
        assert type(node).__name__ == BlockSparseAttention.__name__ + 'Backward'
        for a, b, t in zip(got[:3], twin[:3], (tol, tol, rpb_tol)):
            if b is not None:
                torch.testing.assert_close(a, b, **t)
