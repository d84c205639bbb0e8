"""``split_qkv``: q, k, v head views of a fused qkv projection, with a copy-free backward.

``qkv (B, *S, 3C)`` (channels ``[q | k | v]``, each head-major) -> ``q, k, v (B, heads, *S, C/heads)``, views.
Done with ``reshape(...).permute(...).unbind(0)``, autograd's backward stacks dq, dk, dv into a new tensor and then
copies it again into the contiguous ``(B, *S, 3C)`` layout the Linear's backward reads: two passes over the
largest gradient of the block. The ``sparse_ops`` attention backward writes dq, dk, dv as the same views of one
buffer laid out like qkv (``sparse_ops.block_sparse.grad_buffers``), so here the gradient of qkv is that buffer,
taken as it is. Gradients that do not come that way (the twin path) are copied into place once.
"""
from __future__ import annotations

import torch

__all__ = ['split_qkv']


def _views(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, ...]:
    b, *spatial, c3 = qkv.shape
    dims = len(spatial)
    heads = qkv.view(b, *spatial, 3, num_heads, c3 // (3 * num_heads))
    # (B, *S, 3, heads, D) -> (3, B, heads, *S, D)
    return heads.permute(dims + 1, 0, dims + 2, *range(1, dims + 1), dims + 3).unbind(0)


class _SplitQKV(torch.autograd.Function):

    @staticmethod
    def forward(ctx, qkv, num_heads):
        ctx.num_heads = num_heads
        ctx.layout = (qkv.shape, qkv.stride(), qkv.storage_offset(), qkv.untyped_storage().nbytes())
        return _views(qkv, num_heads)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        shape, stride, offset, nbytes = ctx.layout
        grads = (dq, dk, dv)
        if all(g is not None for g in grads) and dq.untyped_storage().nbytes() == nbytes \
                and dq.untyped_storage().data_ptr() == dk.untyped_storage().data_ptr() \
                == dv.untyped_storage().data_ptr():
            packed = dq.as_strided(shape, stride, offset)
            if all(g.stride() == want.stride() and g.storage_offset() == want.storage_offset()
                   for g, want in zip(grads, _views(packed, ctx.num_heads))):
                return packed, None
        packed = torch.empty(shape, device=(dq if dq is not None else dk if dk is not None else dv).device,
                             dtype=next(g.dtype for g in grads if g is not None))
        for g, view in zip(grads, _views(packed, ctx.num_heads)):
            view.copy_(g) if g is not None else view.zero_()
        return packed, None


def split_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv (B, *S, 3C)`` contiguous -> ``q, k, v (B, num_heads, *S, C // num_heads)`` (views)."""
    if qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f'split_qkv: last dim {qkv.shape[-1]} is not 3 * num_heads * head_dim '
                         f'(num_heads={num_heads}), qkv.shape={tuple(qkv.shape)}')
    qkv = qkv.contiguous()
    if not qkv.requires_grad or torch.compiler.is_compiling():
        return _views(qkv, num_heads)
    return _SplitQKV.apply(qkv, num_heads)
