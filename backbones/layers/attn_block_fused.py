"""The math of a pre-norm attention block as one autograd node on the Triton path, shared by the fused HWT and
NAT / DiNAT blocks (``hwt_fused``, ``nat_fused``): ``x -> x2 = x + s1 * proj(attn(ln1(x))) -> x2 + s2 * mlp(ln2(x2))``
with the attention a block-sparse pattern (``sparse_ops.patterns``) with a 2D relative position bias.

Why: at feature-map sizes a training step of these backbones waits for the host, not the GPU (HWT-T's batch-1 step did
not grow from 512² to 1024² before this Function: docs/benchmarks.md at 167f716, session 10). Here the kernels are
called directly with a hand-written backward: no autograd node per op, no argument checks per op, GELU recomputed in the
backward, the attention's dq, dk, dv written into one qkv-shaped gradient. The backbone's CUDA graphs (``backbones/graphs.py``)
capture these nodes like any other op.

Same math as the module composition (the op it calls at each step, in the same dtypes: fp32 residual stream, the
low-precision dtype of the pre-cast weights for the matmuls and the attention), except that both LayerNorms always
take the Triton kernel (``PreNorm`` takes PyTorch's norm below ``PreNorm.min_elements``: same fp32 statistics,
another summation order) and the first norm's input gradient is written with the residual gradient added in its
kernel.

The block's ``spec`` (a frozen dataclass) gives ``num_heads``, ``eps1`` / ``eps2`` (the norms'), ``value1`` /
``value2`` (the residual branches' addcmul values) and ``plan(n, head_dim, device) -> (pattern, config)``: the
attention's (cached) ``BlockPattern``, with token coordinates for the bias, and its kernel config.

Shapes: x ``(B, N, C)`` tokens in the pattern's memory order (channel stride 1), fp32 residual stream (or the low
dtype itself without autocast); weights (:data:`N_GRADS` - 4 of them, the order of ``forward_math``'s ``params``)
as the modules hold them (``Linear`` ``(out, in)``; Linear weights and biases in the low dtype ``L`` when
``layers.linear.cast_linear_weights`` pre-cast them), the norms' and the position-bias table ``(heads, 2r-1,
2r-1)`` (or None) in fp32; the output is ``(B, N, C)`` like x.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_ops import patterns
from sparse_ops.kernels import block_sparse, block_sparse_bwd, block_sparse_fwd, norm_triton

from .fused_block import GradSink, branch_grad, factor_grad, fused_backward, fused_forward, low_pair, mlp_backward, \
    norm_out, residual

__all__ = ['AttentionBlockFunction', 'block_params', 'forward_math', 'backward_math', 'kernels', 'N_GRADS']

N_GRADS = 17        # x, spec, s1, s2 and the 13 weights of the block Function's apply


def kernels():
    """(norm, patterns, default_config, block-sparse fwd, bwd, split_heads): the Triton modules' entry points this
    Function uses (``sparse_ops.kernels``: None without Triton, where no fused block runs)."""
    return (norm_triton, patterns, block_sparse_fwd.default_config, block_sparse_fwd.block_sparse_fwd,
            block_sparse_bwd.block_sparse_bwd, block_sparse.split_heads)


def block_params(block, rpb) -> list:
    """The 13 weight / bias tensors of a pre-norm block (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
    ``mlp.fc1``, ``mlp.fc2``) with its position-bias table ``rpb`` (or None), in ``forward_math``'s ``params``
    order: the pre-cast low-precision pairs of the Linear layers where ``cast_linear_weights`` set them, else the
    parameters."""
    attn, mlp = block.attn, block.mlp
    return [*low_pair(block.norm1), *low_pair(attn.qkv), rpb, *low_pair(attn.proj), *low_pair(block.norm2),
            *low_pair(mlp.fc1), *low_pair(mlp.fc2)]


def forward_math(x, spec, s1, s2, params, need_s1: bool, need_s2: bool, out=None, copy_input=False):
    """The block's forward on the kernels: ``(out, saved, aux)`` with ``saved`` the tensors and ``aux`` the rest
    that :func:`backward_math` needs. ``params``: ``(n1_w, n1_b, qkv_w, qkv_b, rpb, proj_w, proj_b, n2_w, n2_b,
    fc1_w, fc1_b, fc2_w, fc2_b)``. ``out`` (optional): the ``(B, N, C)`` buffer to write the result into;
    ``copy_input``: save a copy of x where the backward keeps x itself (x is a reused buffer)."""
    n1_w, n1_b, qkv_w, qkv_b, rpb, proj_w, proj_b, n2_w, n2_b, fc1_w, fc1_b, fc2_w, fc2_b = params
    norm, _, _, fwd, _, split = kernels()
    low = qkv_w.dtype
    b, n, c = x.shape
    m, heads = b * n, spec.num_heads
    save_xhat = low.itemsize < x.dtype.itemsize
    y1, mean1, rstd1, xhat1 = norm.layer_norm_fwd(x.view(m, c), n1_w, n1_b, spec.eps1, low, save_xhat)
    qkv = F.linear(y1, qkv_w, qkv_b).view(b, n, 3 * c)
    p, cfg = spec.plan(n, c // heads, x.device)
    scale = (c // heads) ** -0.5
    o, lse = fwd(*split(qkv, heads), p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, rpb, p.rows, scale, p.mask_mode,
                 p.n_groups, cfg, None, heads_last=True)
    a = o.transpose(1, 2).reshape(m, c)                                   # heads merged: a view of o's buffer
    y = F.linear(a, proj_w, proj_b).view(b, n, c)
    x2 = residual(x, y, s1, spec.value1)
    y2, mean2, rstd2, xhat2 = norm.layer_norm_fwd(x2.view(m, c), n2_w, n2_b, spec.eps2, low, save_xhat)
    u = F.linear(y2, fc1_w, fc1_b)
    mlp = F.linear(F.gelu(u), fc2_w, fc2_b).view(b, n, c)
    out = residual(x2, mlp, s2, spec.value2, out)

    x_kept = x.view(m, c).clone() if copy_input else x.view(m, c)
    ln1 = (xhat1, None) if save_xhat else (x_kept, mean1)
    ln2 = (xhat2, None) if save_xhat else (x2.view(m, c), mean2)
    # the norms' outputs y1, y2 are not kept: the backward recomputes them from xhat (or x, mean, rstd)
    saved = (*ln1, rstd1, qkv, o, lse, y if need_s1 else None, *ln2, rstd2, u, mlp if need_s2 else None, s1, s2,
             n1_w, n1_b, qkv_w, rpb, proj_w, n2_w, n2_b, fc1_w, fc2_w)
    biases = (n1_b, qkv_b, proj_b, n2_b, fc1_b, fc2_b)
    bias_dtypes = {at: t.dtype for at, t in zip((5, 7, 10, 12, 14, 16), biases) if t is not None}  # by grad index
    return out, saved, (p, cfg, scale, save_xhat, bias_dtypes)


def backward_math(spec, need, saved, aux, dout, dx_out=None) -> list:
    """The block's backward on the kernels from :func:`forward_math`'s ``saved`` / ``aux``: the ``N_GRADS``
    gradients of the block Function's ``apply``'s tensor arguments (None where ``need`` is False). ``dx_out``
    (optional): the buffer to write the input gradient into."""
    (ln1_x, mean1, rstd1, qkv, o, lse, y, ln2_x, mean2, rstd2, u, mlp, s1, s2,
     n1_w, n1_b, qkv_w, rpb, proj_w, n2_w, n2_b, fc1_w, fc2_w) = saved
    p, cfg, scale, save_xhat, bias_dt = aux
    norm, _, _, _, bwd, split = kernels()
    low = qkv_w.dtype
    b, n, c3 = qkv.shape
    c, m, heads = c3 // 3, b * n, spec.num_heads
    dout = dout.contiguous()
    sink = GradSink(need, bias_dt, save_xhat)
    # MLP branch: out = x2 + s2 * mlp
    ln2_out = norm_out(ln2_x, mean2, rstd2, n2_w, n2_b, low, save_xhat)
    dy2 = mlp_backward(sink, dout, mlp, s2, spec.value2, u, fc1_w, fc2_w, ln2_out, 13, 15)
    dx2 = sink.norm(norm, dy2, ln2_x, n2_w, mean2, rstd2, 11, dout)          # (B, N, C) like x
    # attention branch: x2 = x + s1 * proj(attn(qkv))
    if s1 is not None and need[2]:
        sink.grads[2] = factor_grad(dx2, y, s1, spec.value1)
    dy = branch_grad(dx2, s1, spec.value1).to(low).view(m, c)
    da = sink.linear(dy, o.transpose(1, 2).reshape(m, c), proj_w, 9, 10)
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
    do = da.view(b, n, heads, c // heads).transpose(1, 2)
    *_, drpb = bwd(do, *split(qkv, heads), o, lse, p.kv_num, p.kv_idx, p.q_num, p.q_idx, p.qwin, p.tok, p.route,
                   rpb, p.rows, scale, p.mask_mode, p.n_groups, cfg, out=split(dqkv, heads))
    if need[8]:
        sink.grads[8] = drpb
    ln1_out = norm_out(ln1_x, mean1, rstd1, n1_w, n1_b, low, save_xhat)
    dy1 = sink.linear(dqkv.view(m, c3), ln1_out, qkv_w, 6, 7)
    dx = sink.norm(norm, dy1, ln1_x, n1_w, mean1, rstd1, 4, dx2, out=dx_out)
    if need[0]:
        sink.grads[0] = dx
    return sink.grads


class AttentionBlockFunction(torch.autograd.Function):
    """``apply(x, spec, s1, s2, n1_w, n1_b, qkv_w, qkv_b, rpb, proj_w, proj_b, n2_w, n2_b, fc1_w, fc1_b, fc2_w,
    fc2_b) -> (B, N, C)``: the block on :func:`forward_math` / :func:`backward_math` (``fused_block``). Each backbone subclasses it (``FusedWindowBlock``,
    ``FusedNeighborhoodBlock``), so its autograd node carries the block's name.

    ``s1``, ``s2``: the residual branches' factors from ``ResidualDropPath.factor`` (None, a layer scale ``(C,)``
    or the stochastic-depth mask ``(B, 1, 1)``, times the layer scale if any), applied with ``spec.value1`` /
    ``value2``."""

    @staticmethod
    def forward(ctx, x, spec, s1, s2, *rest):
        return fused_forward(ctx, x, spec, s1, s2, rest, backward_math, forward_math)

    @staticmethod
    def backward(ctx, dout):
        return fused_backward(ctx, dout)
