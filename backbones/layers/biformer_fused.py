"""A whole BiFormer block as one autograd node on the Triton path (``fused_block``): routing blocks, and the last
stage's global-attention blocks as routing with one region (``n_win = topk = 1``: every query attends to every
key, through the same block-sparse kernels), their LCE on the attention input instead of V (``lce_on_input``).

Why: BiFormer-S's training step at feature-map sizes is bound by host work, not by the GPU: the module composition
issues more host work per step (every op's Python wrapper, autograd node and launch) than it gives the GPU
(docs/benchmarks.md at 167f716, sessions 6-7, has the measurement). This Function runs the block
``x + pos(x) -> x + attn(ln1(x)) -> x + mlp(ln2(x))`` with the kernels called directly and a hand-written
backward: no autograd node per op, no argument checks per op, no slice-backward copies, GELU recomputed in the
backward, the LCE's dV added into the attention's dqkv in place.

Same math as the composition in ``biformer_blocks`` (each step the op the composition calls, in the same dtypes:
fp32 residual stream, the low-precision dtype of the pre-cast weights for the matmuls, fp32 O kept for the
attention backward), except for three roundings fewer: both depthwise convs always take the Triton kernel (fp32
math), the LCE adds its conv to the fp32 attention output before the one rounding to the low dtype, and the
pos-embed conv's input gradient is added to the residual gradient in fp32 without a round trip through the low
dtype.

Shapes: x ``(B, H, W, C)`` (channel stride 1), fp32 residual stream (or the low dtype itself without autocast);
weights as the modules hold them (``Linear`` ``(out, in)``, depthwise ``(C, 1, k, k)``), the Linear / conv ones
in the low dtype ``L`` (``layers.linear.cast_linear_weights``), the norms' in fp32; returns ``(B, H, W, C)`` like x.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from sparse_ops.kernels import block_sparse, block_sparse_bwd, block_sparse_fwd, dwconv_triton, norm_triton, \
    triton_api

from .fused_block import GradSink, branch_grad, cached_spec, factor_grad, fused_backward, fused_forward, low_pair, \
    mlp_backward, norm_out, residual

__all__ = ['FusedRoutingBlock', 'BlockSpec', 'fused_block', 'N_GRADS']

N_GRADS = 20        # x, spec, s1, s2 and the 16 weights of FusedRoutingBlock.apply


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """The non-tensor arguments of :class:`FusedRoutingBlock`."""
    num_heads: int
    n_win: int
    topk: int
    scale: float            # attention scale
    eps1: float             # norm1 / norm2 eps
    eps2: float
    value1: float           # addcmul value of the two residual branches (1 / keep_prob, or 1)
    value2: float
    lce_on_input: bool = False      # LCE on norm1's output (the global block's AttentionLePE), not on V


def _kernels():
    """(norm, dwconv, attention api, block-sparse fwd, bwd, split_heads): the Triton modules' entry points this
    Function uses (``sparse_ops.kernels``: None without Triton, where no fused block runs)."""
    return (norm_triton, dwconv_triton, triton_api, block_sparse_fwd.block_sparse_fwd,
            block_sparse_bwd.block_sparse_bwd, block_sparse.split_heads)


def forward_math(x, spec: BlockSpec, s1, s2, params, need_s1: bool, need_s2: bool, out=None, copy_input=False):
    """The block's forward on the kernels: ``(out, saved, aux)`` with ``saved`` the tensors and ``aux`` the rest
    that :func:`backward_math` needs. ``out`` (optional): the ``(B, H, W, C)`` buffer to write the result into;
    ``copy_input``: save a copy of x even where x is already in the low dtype (x is a reused buffer)."""
    (pos_w, pos_b, n1_w, n1_b, qkv_w, qkv_b, lepe_w, lepe_b, proj_w, proj_b, n2_w, n2_b, fc1_w, fc1_b, fc2_w,
     fc2_b) = params
    norm, dw, api, fwd, _, split = _kernels()
    low = qkv_w.dtype
    b, h, w, c = x.shape
    m = b * h * w
    xl = x.to(low, copy=copy_input)
    x1 = dw.dwconv_fwd(xl, pos_w, pos_b, x, x.dtype)                       # x + pos(x), (B, H, W, C)
    save_xhat = low.itemsize < x.dtype.itemsize
    y1, mean1, rstd1, xhat1 = norm.layer_norm_fwd(x1.view(m, c), n1_w, n1_b, spec.eps1, low, save_xhat)
    qkv = F.linear(y1, qkv_w, qkv_b).view(b, h, w, 3 * c)
    pattern, cfg = api.routing_qkv_plan(qkv, spec.num_heads, spec.n_win, spec.topk)
    o_fp32 = low != torch.float32
    p = pattern
    o, lse = fwd(*split(qkv, spec.num_heads), p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, None, p.rows,
                 spec.scale, p.mask_mode, p.n_groups, cfg, torch.float32 if o_fp32 else None, heads_last=True)
    lce_in = y1.view(b, h, w, c) if spec.lce_on_input else qkv[..., 2 * c:]
    # attn + lce(v or y1), heads merged; the kernel reads the fp32 O in place (no rounded copy of it)
    a = dw.dwconv_fwd(lce_in, lepe_w, lepe_b, o.transpose(1, 2).view(b, h, w, c), low)
    y = F.linear(a.view(m, c), proj_w, proj_b).view(b, h, w, c)
    x2 = residual(x1, y, s1, spec.value1)
    y2, mean2, rstd2, xhat2 = norm.layer_norm_fwd(x2.view(m, c), n2_w, n2_b, spec.eps2, low, save_xhat)
    u = F.linear(y2, fc1_w, fc1_b)
    mlp = F.linear(F.gelu(u), fc2_w, fc2_b).view(b, h, w, c)
    out = residual(x2, mlp, s2, spec.value2, out)

    ln1 = (xhat1, None) if save_xhat else (x1.view(m, c), mean1)
    ln2 = (xhat2, None) if save_xhat else (x2.view(m, c), mean2)
    # the norms' outputs y1, y2 are not kept: the backward recomputes them from xhat (or x, mean, rstd)
    saved = (xl, *ln1, rstd1, qkv, o, lse, a, y if need_s1 else None, *ln2, rstd2, u,
             mlp if need_s2 else None, s1, s2, pos_w, n1_w, n1_b, qkv_w, lepe_w, proj_w, n2_w, n2_b, fc1_w, fc2_w)
    biases = (pos_b, n1_b, qkv_b, lepe_b, proj_b, n2_b, fc1_b, fc2_b)
    bias_dtypes = {at: t.dtype for at, t in zip(range(5, 20, 2), biases) if t is not None}  # by grad index
    return out, saved, (pattern, cfg, save_xhat, bias_dtypes)


def backward_math(spec: BlockSpec, need, saved, aux, dout, dx_out=None) -> list:
    """The block's backward on the kernels from :func:`forward_math`'s ``saved`` / ``aux``: the 20 gradients of
    ``FusedRoutingBlock.apply``'s tensor arguments (None where ``need`` is False). ``dx_out`` (optional): the
    buffer to write the input gradient into."""
    (xl, ln1_x, mean1, rstd1, qkv, o, lse, a, y, ln2_x, mean2, rstd2, u, mlp, s1, s2,
     pos_w, n1_w, n1_b, qkv_w, lepe_w, proj_w, n2_w, n2_b, fc1_w, fc2_w) = saved
    p, cfg, save_xhat, bias_dt = aux
    norm, dw, _, _, bwd, split = _kernels()
    low = qkv_w.dtype
    b, h, w, c = xl.shape
    m = b * h * w
    dout = dout.contiguous()
    sink = GradSink(need, bias_dt, save_xhat)

    def conv_weight_grads(dy, inp, weight, w_at):
        if need[w_at] or need[w_at + 1]:
            k = weight.shape[-1]
            dweight, dbias = dw.weight_grads(dw.dwconv_dw(dy, inp, k), k, weight.dtype)
            if need[w_at]:
                sink.grads[w_at] = dweight
            if need[w_at + 1] and w_at + 1 in bias_dt:
                sink.grads[w_at + 1] = dbias.to(bias_dt[w_at + 1])

    # MLP branch: out = x2 + s2 * mlp
    ln2_out = norm_out(ln2_x, mean2, rstd2, n2_w, n2_b, low, save_xhat)
    dy2 = mlp_backward(sink, dout, mlp, s2, spec.value2, u, fc1_w, fc2_w, ln2_out, 16, 18)
    dx2 = sink.norm(norm, dy2, ln2_x, n2_w, mean2, rstd2, 14, dout)         # (B, H, W, C) like x
    # attention branch: x2 = x1 + s1 * proj(attn(qkv) + lce(v))
    if s1 is not None and need[2]:
        sink.grads[2] = factor_grad(dx2, y, s1, spec.value1)
    dy = branch_grad(dx2, s1, spec.value1).to(low).view(m, c)
    da = sink.linear(dy, a.view(m, c), proj_w, 12, 13).view(b, h, w, c)
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
    do = da.view(b, h * w, spec.num_heads, c // spec.num_heads).transpose(1, 2)
    bwd(do, *split(qkv, spec.num_heads), o, lse, p.kv_num, p.kv_idx, p.q_num, p.q_idx, p.qwin, p.tok, p.route,
        None, p.rows, spec.scale, p.mask_mode, p.n_groups, cfg, out=split(dqkv, spec.num_heads))
    ln1_out = norm_out(ln1_x, mean1, rstd1, n1_w, n1_b, low, save_xhat)
    if not spec.lce_on_input:   # a = attn + lce(v): v's gradient gets the conv's
        dqkv[..., 2 * c:] += dw.dwconv_fwd(da, lepe_w, out_dtype=low, flip=True)
        conv_weight_grads(da, qkv[..., 2 * c:], lepe_w, 10)
    dy1 = sink.linear(dqkv.view(m, 3 * c), ln1_out, qkv_w, 8, 9)
    if spec.lce_on_input:       # a = attn + lce(y1): y1's gradient is qkv's plus the conv's (added in its kernel)
        conv_weight_grads(da, ln1_out.view(b, h, w, c), lepe_w, 10)
        dy1 = dw.dwconv_fwd(da, lepe_w, None, dy1.view(b, h, w, c), low, flip=True).view(m, c)
    dx1 = sink.norm(norm, dy1, ln1_x, n1_w, mean1, rstd1, 6, dx2)
    # pos embed: x1 = x + pos(x)
    conv_weight_grads(dx1, xl, pos_w, 4)
    if need[0]:
        sink.grads[0] = dw.dwconv_fwd(dx1, pos_w, None, dx1, dx1.dtype, flip=True, out=dx_out)
    return sink.grads


class FusedRoutingBlock(torch.autograd.Function):
    """``apply(x, spec, s1, s2, pos_w, pos_b, n1_w, n1_b, qkv_w, qkv_b, lepe_w, lepe_b, proj_w, proj_b, n2_w, n2_b,
    fc1_w, fc1_b, fc2_w, fc2_b) -> (B, H, W, C)``: a BiFormer routing block (module docstring).

    ``s1``, ``s2``: the residual branches' factors from ``ResidualDropPath.factor`` (None, layer scale ``(C,)``
    or the stochastic-depth mask ``(B, 1, 1, 1)`` times it), applied with ``spec.value1`` / ``value2``."""

    @staticmethod
    def forward(ctx, x, spec, s1, s2, *rest):
        return fused_forward(ctx, x, spec, s1, s2, rest, backward_math, forward_math)

    @staticmethod
    def backward(ctx, dout):
        return fused_backward(ctx, dout)


def _spec(block, v1: float, v2: float) -> BlockSpec:
    """The block's :class:`BlockSpec` for branch values v1, v2 (cached on the block: two cases per block)."""
    attn = block.attn
    return cached_spec(block, (v1, v2), lambda: BlockSpec(attn.num_heads, attn.n_win, attn.routed_topk, attn.scale,
                                                          block.norm1.eps, block.norm2.eps, v1, v2,
                                                          attn.lce_on_input))


def _params(block) -> list:
    """The 16 weight / bias tensors in ``FusedRoutingBlock``'s order: the pre-cast low-precision pairs of the
    Linear / conv layers where ``cast_linear_weights`` set them, else the parameters."""
    attn, mlp = block.attn, block.mlp
    mods = (block.pos_embed, block.norm1, attn.qkv, attn.lepe, attn.proj, block.norm2, mlp.fc1, mlp.fc2)
    return [t for mod in mods for t in low_pair(mod)]


def fused_block(block, x: torch.Tensor) -> torch.Tensor:
    """``block`` (a ``BiFormerBlock``) on the channels-last map x ``(B, H, W, C)`` through
    :class:`FusedRoutingBlock`; the caller has checked that it applies (``BiFormerBlock._fused``)."""
    s1, v1 = block.drop_path.factor(x, block.gamma1)
    s2, v2 = block.drop_path.factor(x, block.gamma2)
    return FusedRoutingBlock.apply(x, _spec(block, v1, v2), s1, s2, *_params(block))
