"""A whole BiFormer block as one autograd node on the Triton path (``fused_block``): ``block_math.routing_block`` (the
math the module composition follows too) run on the kernels (:class:`RoutingKernelOps`) with its one hand-written
backward (:func:`backward_math`). Routing blocks, and the last
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
weights by name (:data:`WEIGHT_NAMES`, built by :func:`block_weights`) as the modules hold them (``Linear``
``(out, in)``, depthwise ``(C, 1, k, k)``), the Linear / conv ones in the low dtype ``L``
(``layers.linear.cast_linear_weights``), the norms' in fp32; returns ``(B, H, W, C)`` like x.
"""
from __future__ import annotations

import dataclasses

import torch

from sparse_ops.kernels import block_sparse, block_sparse_bwd, block_sparse_fwd, dwconv_triton, norm_triton, \
    triton_api

from .block_math import routing_block
from .fused_block import GradSink, KernelOps, branches_backward, cached_spec, fused_apply, fused_backward, \
    fused_forward, linear_weights, norm_eps, norm_out, saved_norm

__all__ = ['FusedRoutingBlock', 'BlockSpec', 'RoutingKernelOps', 'block_weights', 'fused_block', 'WEIGHT_NAMES']

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
    eps: tuple              # (('norm1', eps), ('norm2', eps))
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


class RoutingKernelOps(KernelOps):
    """``block_math``'s ops on the kernels for BiFormer: ``fused_block.KernelOps`` plus the routed (or one-region)
    block-sparse attention with its LCE, and the depthwise conv + residual of the position embedding."""

    def conv_add(self, name: str, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + conv(x)`` ``(B, H, W, C)`` for the depthwise conv ``name``, in the residual's dtype, x cast
        to ``low`` first (as autocast's conv would). Saves ``name.x`` (the cast x, for the weight gradient)."""
        xl = self.saved[name + '.x'] = x.to(self.low)
        return dwconv_triton.dwconv_fwd(xl, self.w[name + '.weight'], self.w[name + '.bias'], residual,
                                        residual.dtype)

    def attention(self, qkv: torch.Tensor, lce_in: torch.Tensor) -> torch.Tensor:
        """qkv ``(B, H, W, 3C)``, lce_in ``(B, H, W, C)`` -> the attention plus ``attn.lepe(lce_in)``, heads
        merged, ``(B, H, W, C)`` in ``low``: the conv's kernel reads O in place (fp32 where ``low`` is narrower:
        one rounding, after the sum). Saves ``attn.qkv``, ``attn.o``, ``attn.lse``, ``attn.out`` (the result, the
        input of ``attn.proj``); ``aux``: the pattern and its kernel config."""
        _, _, api, fwd, _, split = _kernels()
        spec, low = self.spec, self.low
        b, h, wd, c3 = qkv.shape
        c = c3 // 3
        p, cfg = api.routing_qkv_plan(qkv, spec.num_heads, spec.n_win, spec.topk)
        o, lse, _ = fwd(*split(qkv, spec.num_heads), p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, None, p.rows,
                        spec.scale, p.mask_mode, p.n_groups, cfg, torch.float32 if low != torch.float32 else None,
                        heads_last=True)
        a = dwconv_triton.dwconv_fwd(lce_in, self.w['attn.lepe.weight'], self.w['attn.lepe.bias'],
                                     o.transpose(1, 2).view(b, h, wd, c), low)
        self.saved.update({'attn.qkv': qkv, 'attn.o': o, 'attn.lse': lse, 'attn.out': a})
        self.aux.update(pattern=p, config=cfg)
        return a


def forward_math(x, spec: BlockSpec, s1, s2, w: dict, need: dict):
    """The block's forward (``block_math.routing_block``) on the kernels: ``(out, saved, aux)``, what
    :func:`backward_math` needs by name (:class:`RoutingKernelOps`). ``w``: the weights by name
    (:data:`WEIGHT_NAMES`); ``need``: which arguments want a gradient (``fused_block``)."""
    ops = RoutingKernelOps(spec, w, s1, s2, need, x, norm_triton)
    out = routing_block(ops, x, spec.lce_on_input)
    return out, ops.saved, ops.aux


def backward_math(spec: BlockSpec, sink: GradSink, w: dict, saved: dict, aux: dict, dout) -> None:
    """``block_math.routing_block`` backwards on the kernels, from what :func:`forward_math` saved: the gradients
    of x, s1, s2 and the weights by name into ``sink`` (where it needs them)."""
    norm, dw, _, _, bwd, split = _kernels()
    p, cfg = aux['pattern'], aux['config']
    low = w['attn.qkv.weight'].dtype
    xl, qkv = saved['pos_embed.x'], saved['attn.qkv']
    b, h, wd, c = xl.shape
    m = b * h * wd
    ln1 = saved_norm(saved, 'norm1')
    # MLP branch and the attention branch's residual: x2 = x1 + s1 * attn.proj(attention(qkv) + attn.lepe(...))
    dx2, dy = branches_backward(norm, sink, spec, w, saved, dout, low)     # dx2 (B, H, W, C) like x
    da = sink.linear(dy, saved['attn.out'].view(m, c), 'attn.proj').view(b, h, wd, c)
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
    do = da.view(b, h * wd, spec.num_heads, c // spec.num_heads).transpose(1, 2)
    bwd(do, *split(qkv, spec.num_heads), saved['attn.o'], saved['attn.lse'], p.kv_num, p.kv_idx, p.q_num, p.q_idx,
        p.qwin, p.tok, p.route, None, p.rows, spec.scale, p.mask_mode, p.n_groups, cfg,
        out=split(dqkv, spec.num_heads))
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
    # pos embed: x1 = x + pos_embed(x)
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
                                                          norm_eps(block), v1, v2, attn.lce_on_input))


def fused_block(block, x: torch.Tensor) -> torch.Tensor:
    """``block`` (a ``BiFormerBlock``) on the channels-last map x ``(B, H, W, C)`` through
    :class:`FusedRoutingBlock`; the caller has checked that it applies (``BiFormerBlock._fused``)."""
    s1, v1 = block.drop_path.factor(x, block.gamma1)
    s2, v2 = block.drop_path.factor(x, block.gamma2)
    return fused_apply(FusedRoutingBlock, x, _spec(block, v1, v2), s1, s2, block_weights(block))
