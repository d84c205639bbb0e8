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
weights by name (:data:`WEIGHT_NAMES`, built by :func:`block_weights`) as the modules hold them (``Linear`` ``(out, in)``, depthwise ``(C, 1, k, k)``), the Linear / conv ones
in the low dtype ``L`` (``layers.linear.cast_linear_weights``), the norms' in fp32; returns ``(B, H, W, C)`` like x.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from sparse_ops.kernels import block_sparse, block_sparse_bwd, block_sparse_fwd, dwconv_triton, norm_triton, \
    triton_api

from .fused_block import GradSink, branch_grad, cached_spec, factor_grad, fused_apply, fused_backward, \
    fused_forward, linear_weights, mlp_backward, norm_out, residual

__all__ = ['FusedRoutingBlock', 'BlockSpec', 'block_weights', 'fused_block', 'WEIGHT_NAMES']

WEIGHT_NAMES = ('pos_embed.weight', 'pos_embed.bias', 'norm1.weight', 'norm1.bias', 'attn.qkv.weight',
                'attn.qkv.bias', 'attn.lepe.weight', 'attn.lepe.bias', 'attn.proj.weight', 'attn.proj.bias',
                'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias')
"""The block's weights by their parameter paths."""


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


def block_weights(block) -> dict:
    """The weights ``{name: tensor or None}`` (:data:`WEIGHT_NAMES`) of a ``BiFormerBlock``: the pre-cast
    low-precision pairs of the Linear / conv layers where ``cast_linear_weights`` set them, else the parameters."""
    attn, mlp = block.attn, block.mlp
    return {**linear_weights(block.pos_embed, 'pos_embed'), 'norm1.weight': block.norm1.weight,
            'norm1.bias': block.norm1.bias, **linear_weights(attn.qkv, 'attn.qkv'),
            **linear_weights(attn.lepe, 'attn.lepe'), **linear_weights(attn.proj, 'attn.proj'),
            'norm2.weight': block.norm2.weight, 'norm2.bias': block.norm2.bias, **linear_weights(mlp.fc1, 'mlp.fc1'),
            **linear_weights(mlp.fc2, 'mlp.fc2')}


def forward_math(x, spec: BlockSpec, s1, s2, w: dict, need: dict):
    """The block's forward on the kernels: ``(out, saved, aux)`` with ``saved`` the tensors by name and ``aux``
    the rest that :func:`backward_math` needs. ``w``: the weights by name (:data:`WEIGHT_NAMES`); ``need``: which
    arguments want a gradient (``fused_block``)."""
    norm, dw, api, fwd, _, split = _kernels()
    low = w['attn.qkv.weight'].dtype
    b, h, wd, c = x.shape
    m = b * h * wd
    xl = x.to(low)
    x1 = dw.dwconv_fwd(xl, w['pos_embed.weight'], w['pos_embed.bias'], x, x.dtype)     # x + pos(x), (B, H, W, C)
    save_xhat = low.itemsize < x.dtype.itemsize
    y1, mean1, rstd1, xhat1 = norm.layer_norm_fwd(x1.view(m, c), w['norm1.weight'], w['norm1.bias'], spec.eps1, low,
                                                  save_xhat)
    qkv = F.linear(y1, w['attn.qkv.weight'], w['attn.qkv.bias']).view(b, h, wd, 3 * c)
    p, cfg = api.routing_qkv_plan(qkv, spec.num_heads, spec.n_win, spec.topk)
    o_fp32 = low != torch.float32
    o, lse = fwd(*split(qkv, spec.num_heads), p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, None, p.rows,
                 spec.scale, p.mask_mode, p.n_groups, cfg, torch.float32 if o_fp32 else None, heads_last=True)
    lce_in = y1.view(b, h, wd, c) if spec.lce_on_input else qkv[..., 2 * c:]
    # attn + lce(v or y1), heads merged; the kernel reads the fp32 O in place (no rounded copy of it)
    a = dw.dwconv_fwd(lce_in, w['attn.lepe.weight'], w['attn.lepe.bias'], o.transpose(1, 2).view(b, h, wd, c), low)
    y = F.linear(a.view(m, c), w['attn.proj.weight'], w['attn.proj.bias']).view(b, h, wd, c)
    x2 = residual(x1, y, s1, spec.value1)
    y2, mean2, rstd2, xhat2 = norm.layer_norm_fwd(x2.view(m, c), w['norm2.weight'], w['norm2.bias'], spec.eps2, low,
                                                  save_xhat)
    u = F.linear(y2, w['mlp.fc1.weight'], w['mlp.fc1.bias'])
    mlp = F.linear(F.gelu(u), w['mlp.fc2.weight'], w['mlp.fc2.bias']).view(b, h, wd, c)
    out = residual(x2, mlp, s2, spec.value2)
    # the norms' outputs y1, y2 are not kept: the backward recomputes them from xhat (or x, mean, rstd)
    saved = dict(xl=xl, ln1_x=xhat1 if save_xhat else x1.view(m, c), ln1_mean=None if save_xhat else mean1,
                 ln1_rstd=rstd1, qkv=qkv, o=o, lse=lse, a=a, y=y if need['s1'] else None,
                 ln2_x=xhat2 if save_xhat else x2.view(m, c), ln2_mean=None if save_xhat else mean2, ln2_rstd=rstd2,
                 u=u, mlp=mlp if need['s2'] else None, s1=s1, s2=s2)
    return out, saved, (p, cfg)


def backward_math(spec: BlockSpec, sink: GradSink, w: dict, saved: dict, aux, dout) -> None:
    """The block's backward on the kernels from :func:`forward_math`'s ``saved`` / ``aux``: the gradients of x,
    s1, s2 and the weights by name into ``sink`` (where it needs them)."""
    p, cfg = aux
    norm, dw, _, _, bwd, split = _kernels()
    low = w['attn.qkv.weight'].dtype
    xl, qkv, s1 = saved['xl'], saved['qkv'], saved['s1']
    b, h, wd, c = xl.shape
    m = b * h * wd
    ln1 = saved['ln1_x'], saved['ln1_mean'], saved['ln1_rstd']
    ln2 = saved['ln2_x'], saved['ln2_mean'], saved['ln2_rstd']
    # MLP branch: out = x2 + s2 * mlp
    ln2_out = norm_out(ln2, w['norm2.weight'], w['norm2.bias'], low)
    dy2 = mlp_backward(sink, dout, saved['s2'], spec.value2, saved['mlp'], saved['u'], ln2_out)
    dx2 = sink.norm(norm, dy2, ln2, 'norm2', dout)                       # (B, H, W, C) like x
    # attention branch: x2 = x1 + s1 * proj(attn(qkv) + lce(v))
    sink.put('s1', lambda: factor_grad(dx2, saved['y'], s1, spec.value1))
    dy = branch_grad(dx2, s1, spec.value1).to(low).view(m, c)
    da = sink.linear(dy, saved['a'].view(m, c), 'attn.proj').view(b, h, wd, c)
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
    do = da.view(b, h * wd, spec.num_heads, c // spec.num_heads).transpose(1, 2)
    bwd(do, *split(qkv, spec.num_heads), saved['o'], saved['lse'], p.kv_num, p.kv_idx, p.q_num, p.q_idx, p.qwin,
        p.tok, p.route, None, p.rows, spec.scale, p.mask_mode, p.n_groups, cfg, out=split(dqkv, spec.num_heads))
    ln1_out = norm_out(ln1, w['norm1.weight'], w['norm1.bias'], low)
    lepe_w = w['attn.lepe.weight']
    if not spec.lce_on_input:   # a = attn + lce(v): v's gradient gets the conv's
        dqkv[..., 2 * c:] += dw.dwconv_fwd(da, lepe_w, out_dtype=low, flip=True)
        sink.conv(dw, da, qkv[..., 2 * c:], 'attn.lepe')
    dy1 = sink.linear(dqkv.view(m, 3 * c), ln1_out, 'attn.qkv')
    if spec.lce_on_input:       # a = attn + lce(y1): y1's gradient is qkv's plus the conv's (added in its kernel)
        sink.conv(dw, da, ln1_out.view(b, h, wd, c), 'attn.lepe')
        dy1 = dw.dwconv_fwd(da, lepe_w, None, dy1.view(b, h, wd, c), low, flip=True).view(m, c)
    dx1 = sink.norm(norm, dy1, ln1, 'norm1', dx2)
    # pos embed: x1 = x + pos(x)
    sink.conv(dw, dx1, xl, 'pos_embed')
    sink.put('x', lambda: dw.dwconv_fwd(dx1, w['pos_embed.weight'], None, dx1, dx1.dtype, flip=True))


class FusedRoutingBlock(torch.autograd.Function):
    """``apply(x, spec, s1, s2, *weights) -> (B, H, W, C)`` with the weights in :data:`WEIGHT_NAMES` order (call it
    through ``fused_block.fused_apply``): a BiFormer routing block (module docstring).

    ``s1``, ``s2``: the residual branches' factors from ``ResidualDropPath.factor`` (None, layer scale ``(C,)``
    or the stochastic-depth mask ``(B, 1, 1, 1)`` times it), applied with ``spec.value1`` / ``value2``."""

    weight_names = WEIGHT_NAMES
    forward_math = staticmethod(forward_math)
    backward_math = staticmethod(backward_math)

    @staticmethod
    def forward(ctx, x, spec, s1, s2, *weights):
        return fused_forward(ctx, FusedRoutingBlock, x, spec, s1, s2, weights)

    @staticmethod
    def backward(ctx, dout):
        return fused_backward(ctx, dout)


def _spec(block, v1: float, v2: float) -> BlockSpec:
    """The block's :class:`BlockSpec` for branch values v1, v2 (cached on the block: two cases per block)."""
    attn = block.attn
    return cached_spec(block, (v1, v2), lambda: BlockSpec(attn.num_heads, attn.n_win, attn.routed_topk, attn.scale,
                                                          block.norm1.eps, block.norm2.eps, v1, v2,
                                                          attn.lce_on_input))


def fused_block(block, x: torch.Tensor) -> torch.Tensor:
    """``block`` (a ``BiFormerBlock``) on the channels-last map x ``(B, H, W, C)`` through
    :class:`FusedRoutingBlock`; the caller has checked that it applies (``BiFormerBlock._fused``)."""
    s1, v1 = block.drop_path.factor(x, block.gamma1)
    s2, v2 = block.drop_path.factor(x, block.gamma2)
    return fused_apply(FusedRoutingBlock, x, _spec(block, v1, v2), s1, s2, block_weights(block))
