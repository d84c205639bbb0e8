"""``split_qkv`` and the attention's packed gradient buffers: same values as reshape/permute/unbind, and the
copy-free hand-over of dq, dk, dv from the Triton backward (interpreter on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

import sparse_ops
from backbones.layers import split_qkv
from backbones.layers import qkv as qkv_module
from sparse_ops.block_sparse import grad_buffers

needs_kernels = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get('TRITON_INTERPRET') != '1',
                                   reason='needs CUDA or TRITON_INTERPRET=1')


def _reference(qkv, heads):
    b, *s, c3 = qkv.shape
    d = len(s)
    return qkv.reshape(b, *s, 3, heads, c3 // (3 * heads)).permute(d + 1, 0, d + 2, *range(1, d + 1), d + 3).unbind(0)


@pytest.mark.parametrize('shape,heads', [((2, 10, 24), 2), ((1, 3, 5, 36), 3)], ids=str)
def test_views_and_gradients_match_unbind(shape, heads):
    torch.manual_seed(0)
    base = torch.randn(shape)
    grads = [torch.randn(_reference(base, heads)[0].shape) for _ in range(3)]
    outs = []
    for fn in (split_qkv, _reference):
        x = base.clone().requires_grad_()
        q, k, v = fn(x, heads)
        sum((t * g).sum() for t, g in zip((q, k, v), grads)).backward()
        outs.append(((q, k, v), x.grad))
    (got, got_grad), (want, want_grad) = outs
    for a, b in zip(got, want):
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert torch.equal(got_grad, want_grad)


def test_unused_output_gets_zero_gradient():
    x = torch.randn(2, 4, 12, requires_grad=True)
    q, k, v = split_qkv(x, 2)
    (q.sum() + 2 * v.sum()).backward()
    assert torch.equal(x.grad, torch.cat([torch.ones(2, 4, 4), torch.zeros(2, 4, 4), 2 * torch.ones(2, 4, 4)], -1))


def test_bad_channel_count_says_so():
    with pytest.raises(ValueError, match='not 3 \\* num_heads'):
        split_qkv(torch.zeros(1, 2, 10), 2)


def test_grad_buffers_share_one_storage_only_for_an_exact_tiling():
    qkv = torch.zeros(2, 7, 3 * 8)
    q, k, v = _reference(qkv, 2)
    dq, dk, dv = grad_buffers(q, k, v)
    assert dq.untyped_storage().data_ptr() == dk.untyped_storage().data_ptr() == dv.untyped_storage().data_ptr()
    assert dq.untyped_storage().data_ptr() != qkv.untyped_storage().data_ptr()
    assert [t.stride() for t in (dq, dk, dv)] == [t.stride() for t in (q, k, v)]
    assert [t.storage_offset() for t in (dq, dk, dv)] == [0, 8, 16]
    # separate tensors, the same tensor three times, or a storage holding more than q, k, v: three new tensors
    for args in ((q.clone(), k.clone(), v.clone()), (q, q, q), _reference(torch.zeros(2, 7, 3 * 8 + 1)[..., :24], 2)):
        bufs = grad_buffers(*args)
        assert len({b.untyped_storage().data_ptr() for b in bufs}) == 3
        assert all(b.is_contiguous() for b in bufs)


@needs_kernels
def test_triton_backward_hands_its_buffer_to_split_qkv(monkeypatch):
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    hw, heads, d = (5, 7), 2, 16
    base = torch.randn(2, hw[0] * hw[1], 3 * heads * d, device=device)
    rpb = 0.1 * torch.randn(heads, 5, 5, device=device)
    g = torch.randn(2, heads, hw[0] * hw[1], d, device=device)
    shared = []
    original = qkv_module._SplitQKV.backward

    def spy(ctx, dq, dk, dv):
        packed, none = original(ctx, dq, dk, dv)
        shared.append(packed.untyped_storage().data_ptr() == dq.untyped_storage().data_ptr())
        return packed, none

    monkeypatch.setattr(qkv_module._SplitQKV, 'backward', staticmethod(spy))
    results = []
    for backend in ('triton', 'torch'):
        x = base.clone().requires_grad_()
        q, k, v = split_qkv(x, heads)
        out = sparse_ops.hilbert_window_attention(q, k, v, 9, shift=True, rpb=rpb, hw=hw, backend=backend)
        (out * g).sum().backward()
        results.append(x.grad)
    assert shared == [True, False], 'the Triton gradients are taken as they are, the twin ones copied into place'
    # fp32: exact dots in the interpreter, tf32 (Triton's fp32 dot) on a GPU
    tol = dict(rtol=1e-4, atol=1e-5) if device == 'cpu' else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results[0], results[1], **tol)
