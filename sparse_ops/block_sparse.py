"""The block-sparse attention op: ``torch.library`` registration, autograd, and the public entry point.

Ladder of names: ``_block_sparse_fwd_kernel`` / ``block_sparse_fwd()`` (``block_sparse_fwd.py``) ->
``_block_sparse_bwd_*_kernel`` / ``block_sparse_bwd()`` (``block_sparse_bwd.py``) -> the registered ops
``sparse_ops::block_sparse_attention_fwd`` / ``_bwd`` (opaque to ``torch.compile``, with fake implementations for
tracing; autograd via ``torch.library.register_autograd``), used under ``torch.compile`` -> the eager
``BlockSparseAttention(torch.autograd.Function)`` over the same launchers (no op-dispatch overhead), one Function
for both layouts -> :func:`block_sparse_attention` (separate q, k, v) and :func:`packed_block_sparse_attention`
(the heads of a fused ``(B, *S, 3C)`` qkv projection as one autograd node, ``sparse_ops.qkv_attention``).

``block_sparse_attention(q, k, v, pattern, scale=None, rpb=None, config=None)``: q, k, v ``(B, H, N, D)``, in the
sequence order of ``pattern`` (a :class:`sparse_ops.patterns.BlockPattern` built for ``config``'s block sizes), or,
when the pattern has ``rows``, in memory (row-major) order with the kernels reading token ``i`` of the sequence
at row ``rows[i]`` (no permuted copy; the output comes back in memory order);
``rpb (H, 2r-1, 2r-1)`` optional (needs ``pattern.tok``). Returns ``(B, H, N, D)`` like q. Differentiable in q, k, v
and rpb.

``o_fp32=True`` keeps the kernel's output in fp32 for the backward and returns it cast to q's dtype, and the
forward multiplies V by the fp32 P (split as ``hi + lo`` in q's dtype: one more ``tl.dot`` per key block). The
backward needs ``delta_i = sum_j P_ij dP_ij``, computed (as in FlashAttention) as ``rowsum(dO * O)``; with O rounded
to bf16, or O = round(P) V, it carries a relative error of ~2^-9 that is the same for every key of row i, and
``dS = P (dP - delta)`` cancels when attention is flat (many keys of similar weight, e.g. BiFormer's scale
``(heads * D)^-0.5``), so that error dominates dS and adds up in gradients summed over tokens (biases, norms).
Measured on an H200 with bf16 O: BiFormer-S parameter gradients 2.5-2.9x the bf16 twin's error; in the CPU test
(fp16) ``sum_j dK_j`` (exactly 0) is 26x the twin's with fp32 O = round(P) V and at the twin's level with the split.
Costs a second output (eager: the kernel stores o in fp32 for the backward and in q's dtype for the caller; under
``torch.compile`` the registered op returns the fp32 o and Inductor casts it), an fp32 instead of a bf16 copy of o
saved for the backward, and the extra dot.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .block_sparse_bwd import block_sparse_bwd
from .block_sparse_fwd import Config, block_sparse_fwd, default_config
from .patterns import BlockPattern
from .reference._common import split_heads

__all__ = ['block_sparse_attention', 'BlockSparseAttention', 'Config', 'split_heads',
           'packed_block_sparse_attention']


@torch.library.custom_op('sparse_ops::block_sparse_attention_fwd', mutates_args=())
def _fwd_op(q: Tensor, k: Tensor, v: Tensor, kv_num: Tensor, kv_idx: Tensor, q_num: Tensor, q_idx: Tensor,
            qwin: Optional[Tensor], tok: Optional[Tensor], route: Optional[Tensor], rpb: Optional[Tensor],
            rows: Optional[Tensor], scale: float, mask_mode: int, n_groups: int, block_m: int, block_n: int,
            num_warps: int, num_stages: int, o_fp32: bool) -> tuple[Tensor, Tensor]:
    cfg = Config(block_m, block_n, num_warps, num_stages)
    o, lse, _ = block_sparse_fwd(q, k, v, kv_num, kv_idx, qwin, tok, route, rpb, rows, scale, mask_mode, n_groups,
                                 cfg, torch.float32 if o_fp32 else None)
    return o, lse


@_fwd_op.register_fake
def _(q, k, v, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows, scale, mask_mode, n_groups, block_m,
      block_n, num_warps, num_stages, o_fp32):
    b, h, n, _ = q.shape
    return q.new_empty(q.shape, dtype=torch.float32 if o_fp32 else q.dtype), q.new_empty((b, h, n),
                                                                                          dtype=torch.float32)


@torch.library.custom_op('sparse_ops::block_sparse_attention_bwd', mutates_args=())
def _bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, kv_num: Tensor, kv_idx: Tensor,
            q_num: Tensor, q_idx: Tensor, qwin: Optional[Tensor], tok: Optional[Tensor], route: Optional[Tensor],
            rpb: Optional[Tensor], rows: Optional[Tensor], scale: float, mask_mode: int, n_groups: int,
            block_m: int, block_n: int, num_warps: int, num_stages: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cfg = Config(block_m, block_n, num_warps, num_stages)
    dq, dk, dv, drpb = block_sparse_bwd(do, q, k, v, o, lse, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb,
                                        rows, scale, mask_mode, n_groups, cfg)
    return dq, dk, dv, (drpb if drpb is not None else q.new_empty((0,)))


@_bwd_op.register_fake
def _(do, q, k, v, o, lse, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows, scale, mask_mode, n_groups,
      block_m, block_n, num_warps, num_stages):
    drpb = torch.empty_like(rpb) if rpb is not None else q.new_empty((0,))
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drpb)


_TABLE_ARGS = ('kv_num', 'kv_idx', 'q_num', 'q_idx', 'qwin', 'tok', 'route')


def _setup_context(ctx, inputs, output):
    q, k, v, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows = inputs[:12]
    ctx.params = inputs[12:]
    o, lse = output
    ctx.has_rpb = rpb is not None
    ctx.save_for_backward(q, k, v, o, lse, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows = ctx.saved_tensors
    do = do.to(q.dtype)  # with o_fp32 the incoming grad is fp32 (the cast to q's dtype is outside the op)
    dq, dk, dv, drpb = _bwd_op(do, q, k, v, o, lse, kv_num, kv_idx, q_num, q_idx, qwin, tok, route, rpb, rows,
                               *ctx.params[:7])
    # grads: q, k, v, the 7 tables, rpb, rows, then the 8 scalar parameters
    return (dq, dk, dv) + (None,) * len(_TABLE_ARGS) + ((drpb if ctx.has_rpb else None), None) + (None,) * 8


torch.library.register_autograd('sparse_ops::block_sparse_attention_fwd', _backward, setup_context=_setup_context)


def _launch_fwd(q, k, v, rpb, pattern: BlockPattern, scale: float, config: Config, o_fp32: bool):
    """The forward launcher on q, k, v ``(B, H, N, D)`` (views, any layout the kernels read): ``(o, lse, out)`` with
    o a ``(B, N, H, D)`` buffer seen as ``(B, H, N, D)`` (fp32 with ``o_fp32``), lse ``(B, H, N)`` fp32 and out o in
    q's dtype, same layout (with ``o_fp32`` a second output of the same kernel, else o itself)."""
    p = pattern
    return block_sparse_fwd(q, k, v, p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, rpb, p.rows, scale, p.mask_mode,
                            p.n_groups, config, torch.float32 if o_fp32 else None, heads_last=True, cast=True)


def _launch_bwd(do, q, k, v, o, lse, rpb, pattern: BlockPattern, scale: float, config: Config, out=None):
    """The backward launchers: ``(dq, dk, dv, drpb)`` (dq, dk, dv written into ``out=(dq, dk, dv)`` when given)."""
    p = pattern
    return block_sparse_bwd(do, q, k, v, o, lse, p.kv_num, p.kv_idx, p.q_num, p.q_idx, p.qwin, p.tok, p.route, rpb,
                            p.rows, scale, p.mask_mode, p.n_groups, config, out=out)


class BlockSparseAttention(torch.autograd.Function):
    """The eager autograd node of block-sparse attention, for both layouts (one forward and one backward launcher).

    - Separate q, k, v: ``apply(q, k, v, rpb, None, pattern, scale, config, o_fp32)`` with q, k, v ``(B, H, N, D)``;
      returns ``(B, H, N, D)``, a view of a ``(B, N, H, D)`` buffer (so the models' merge of heads is a view, not a
      copy); gradients dq, dk, dv.
    - Packed: ``apply(qkv, None, None, rpb, num_heads, pattern, scale, config, o_fp32)`` with ``qkv (B, *S, 3C)``
      contiguous: the kernels read q, k, v in place (:func:`split_heads`), the output is ``(B, *S, C)`` (heads
      merged: a view of the same buffer) and the backward writes dq, dk, dv into one ``qkv``-shaped gradient.

    Calls the launchers directly (the registered op's Python dispatch costs host time per forward+backward
    comparable to the kernels at feature-map sizes); same math as the registered op used under ``torch.compile``.
    """

    @staticmethod
    def forward(ctx, q, k, v, rpb, num_heads, pattern, scale, config, o_fp32=False):
        packed = num_heads is not None
        heads = split_heads(q, num_heads) if packed else (q, k, v)
        o, lse, out = _launch_fwd(*heads, rpb, pattern, scale, config, o_fp32)
        ctx.save_for_backward(q, k, v, o, lse, rpb)
        ctx.num_heads, ctx.pattern, ctx.scale, ctx.config = num_heads, pattern, scale, config
        if packed:
            return out.transpose(1, 2).view(q.shape[:-1] + (q.shape[-1] // 3,))
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, o, lse, rpb = ctx.saved_tensors
        args = (o, lse, rpb, ctx.pattern, ctx.scale, ctx.config)
        if ctx.num_heads is None:
            dq, dk, dv, drpb = _launch_bwd(dout, q, k, v, *args)
            return dq, dk, dv, drpb, None, None, None, None, None
        b, h, n, d = o.shape
        dqkv = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        drpb = _launch_bwd(dout.reshape(b, n, h, d).transpose(1, 2), *split_heads(q, ctx.num_heads), *args,
                           out=split_heads(dqkv, ctx.num_heads))[3]
        return dqkv, None, None, drpb, None, None, None, None, None


def _prepare(pattern: BlockPattern, config: Optional[Config], rpb: Optional[Tensor], scale: Optional[float],
             head_dim: int, n: int, device) -> tuple[Config, Optional[Tensor], float]:
    """The checks and defaults both layouts share: ``(config, rpb, scale)``."""
    if config is None:
        config = default_config(head_dim, device, pattern.mask_mode)
    if (pattern.block_m, pattern.block_n) != (config.block_m, config.block_n):
        raise ValueError(f'pattern built for blocks {(pattern.block_m, pattern.block_n)} but '
                         f'{config.block_m=} {config.block_n=}')
    if n != pattern.n:
        raise ValueError(f'pattern is for N={pattern.n} tokens, got {n} tokens')
    if rpb is not None:
        if pattern.tok is None:
            raise ValueError('rpb needs token coordinates in the pattern (pass hw=(H, W))')
        rpb = rpb.contiguous()
    return config, rpb, float(head_dim ** -0.5 if scale is None else scale)


def packed_block_sparse_attention(qkv: Tensor, num_heads: int, pattern: BlockPattern, scale: Optional[float] = None,
                                  rpb: Optional[Tensor] = None, config: Optional[Config] = None,
                                  o_fp32: bool = False) -> Tensor:
    """:func:`block_sparse_attention` on ``split_heads(qkv, num_heads)``, heads merged: ``qkv (B, *S, 3C)`` ->
    ``(B, *S, C)`` (``prod(S)`` = the pattern's N, in its memory order). One autograd node on the eager path
    (:class:`BlockSparseAttention`, packed layout); under ``torch.compile`` the split, the registered op and the
    merge. ``o_fp32`` as in :func:`block_sparse_attention`."""
    if qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f'qkv last dim {qkv.shape[-1]} is not 3 * num_heads * head_dim (num_heads={num_heads}), '
                         f'qkv.shape={tuple(qkv.shape)}')
    qkv = qkv.contiguous()
    if torch.compiler.is_compiling():
        q, k, v = split_heads(qkv, num_heads)
        o = block_sparse_attention(q, k, v, pattern, scale, rpb, config, o_fp32)
        return o.transpose(1, 2).reshape(qkv.shape[:-1] + (qkv.shape[-1] // 3,))
    config, rpb, scale = _prepare(pattern, config, rpb, scale, qkv.shape[-1] // (3 * num_heads),
                                  qkv.numel() // (qkv.shape[0] * qkv.shape[-1]), qkv.device)
    return BlockSparseAttention.apply(qkv, None, None, rpb, num_heads, pattern, scale, config, o_fp32)


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern, scale: Optional[float] = None,
                           rpb: Optional[Tensor] = None, config: Optional[Config] = None,
                           o_fp32: bool = False) -> Tensor:
    """Attention of q over the (key, value) pairs allowed by ``pattern``; see the module docstring for shapes.

    Eager calls go through :class:`BlockSparseAttention` (separate layout); under ``torch.compile`` the registered
    op ``sparse_ops::block_sparse_attention_fwd`` (with its fake and autograd registrations) is traced instead.
    """
    config, rpb, scale = _prepare(pattern, config, rpb, scale, q.shape[-1], q.shape[-2], q.device)
    if not torch.compiler.is_compiling():
        return BlockSparseAttention.apply(q, k, v, rpb, None, pattern, scale, config, o_fp32)
    o, _ = _fwd_op(q, k, v, pattern.kv_num, pattern.kv_idx, pattern.q_num, pattern.q_idx, pattern.qwin,
                   pattern.tok, pattern.route, rpb, pattern.rows, scale, pattern.mask_mode, pattern.n_groups,
                   config.block_m, config.block_n, config.num_warps, config.num_stages, o_fp32)
    return o.to(q.dtype)
