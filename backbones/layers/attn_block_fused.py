"""A pre-norm attention block as one autograd node on the Triton path, shared by the fused HWT and NAT / DiNAT blocks
(``hwt_fused``, ``nat_fused``): ``block_math.attention_block`` (``x -> x2 = x + s1 * proj(attn(ln1(x))) -> x2 + s2 *
mlp(ln2(x2))``, the math the module composition follows too) run on the kernels (:class:`AttentionKernelOps`), and
its one hand-written backward (:func:`backward_math`); the attention a block-sparse pattern (``sparse_ops.patterns``)
with a 2D relative position bias.

Why: at feature-map sizes a training step of these backbones waits for the host, not the GPU (HWT-T's batch-1 step did
not grow from 512² to 1024² before this Function: docs/benchmarks.md at 167f716, session 10). Here the kernels are
called directly with a hand-written backward: no autograd node per op, no argument checks per op, GELU recomputed in the
backward, the attention's dq, dk, dv written into one qkv-shaped gradient. The backbone's CUDA graphs
(``backbones/graphs.py``) capture these nodes like any other op.

Same math as the module composition (the same ``attention_block``; at each step the op the composition calls, in the
same dtypes: fp32 residual stream, the
low-precision dtype of the pre-cast weights for the matmuls and the attention), except that both LayerNorms always
take the Triton kernel (``PreNorm`` takes PyTorch's norm below ``PreNorm.min_elements``: same fp32 statistics,
another summation order) and the first norm's input gradient is written with the residual gradient added in its
kernel.

The block's ``spec`` (a frozen dataclass) gives ``num_heads``, ``eps`` (``(('norm1', eps), ('norm2', eps))``),
``value1`` / ``value2`` (the residual branches' addcmul values) and ``plan(n, head_dim, device) -> (pattern,
config)``: the attention's (cached) ``BlockPattern``, with token coordinates for the bias, and its kernel config.

Shapes: x ``(B, N, C)`` tokens in the pattern's memory order (channel stride 1), fp32 residual stream (or the low
dtype itself without autocast); weights by name (:data:`WEIGHT_NAMES`, built by :func:`block_weights`) as the
modules hold them (``Linear`` ``(out, in)``; Linear weights and biases in the low dtype ``L`` when
``layers.linear.cast_linear_weights`` pre-cast them), the norms' and the position-bias table ``(heads, 2r-1,
2r-1)`` (or None) in fp32; the output is ``(B, N, C)`` like x.
"""
from __future__ import annotations

import torch

from sparse_ops import patterns
from sparse_ops.kernels import block_sparse, block_sparse_bwd, block_sparse_fwd, norm_triton

from .block_math import attention_block
from .fused_block import GradSink, KernelOps, branches_backward, fused_backward, fused_forward, linear_weights, \
    norm_out, saved_norm

__all__ = ['AttentionBlockFunction', 'AttentionKernelOps', 'block_weights', 'forward_math', 'backward_math', 'kernels',
           'WEIGHT_NAMES']

WEIGHT_NAMES = ('norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.rpb', 'attn.proj.weight',
                'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
                'mlp.fc2.bias')
"""The block's weights by their parameter paths (the position-bias table as ``attn.rpb``, NATTEN's name; HWT's
``attn.relative_position_bias_table``)."""


def kernels():
    """(norm, patterns, default_config, block-sparse fwd, bwd, split_heads): the Triton modules' entry points this
    Function uses (``sparse_ops.kernels``: None without Triton, where no fused block runs)."""
    return (norm_triton, patterns, block_sparse_fwd.default_config, block_sparse_fwd.block_sparse_fwd,
            block_sparse_bwd.block_sparse_bwd, block_sparse.split_heads)


def block_weights(block, rpb) -> dict:
    """The weights ``{name: tensor or None}`` (:data:`WEIGHT_NAMES`) of a pre-norm block (``norm1``, ``attn.qkv``,
    ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) with its position-bias table ``rpb`` (or None): the
    pre-cast low-precision pairs of the Linear layers where ``cast_linear_weights`` set them, else the
    parameters."""
    attn, mlp = block.attn, block.mlp
    return {'norm1.weight': block.norm1.weight, 'norm1.bias': block.norm1.bias, **linear_weights(attn.qkv, 'attn.qkv'),
            'attn.rpb': rpb, **linear_weights(attn.proj, 'attn.proj'), 'norm2.weight': block.norm2.weight,
            'norm2.bias': block.norm2.bias, **linear_weights(mlp.fc1, 'mlp.fc1'), **linear_weights(mlp.fc2, 'mlp.fc2')}


class AttentionKernelOps(KernelOps):
    """``block_math``'s ops on the kernels for this family: ``fused_block.KernelOps`` plus the block-sparse
    attention."""

    def attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv ``(B, N, 3C)`` -> ``(B, N, C)`` (heads merged: a view of O's buffer). Saves ``attn.qkv``,
        ``attn.o``, ``attn.lse``; ``aux``: the pattern, its kernel config and the scale."""
        _, _, _, fwd, _, split = kernels()
        b, n, c3 = qkv.shape
        c, heads = c3 // 3, self.spec.num_heads
        p, cfg = self.spec.plan(n, c // heads, qkv.device)
        scale = (c // heads) ** -0.5
        o, lse, _ = fwd(*split(qkv, heads), p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, self.w['attn.rpb'], p.rows,
                        scale, p.mask_mode, p.n_groups, cfg, None, heads_last=True)
        self.saved.update({'attn.qkv': qkv, 'attn.o': o, 'attn.lse': lse})
        self.aux.update(pattern=p, config=cfg, scale=scale)
        return o.transpose(1, 2).reshape(b, n, c)


def forward_math(x, spec, s1, s2, w: dict, need: dict):
    """The block's forward (``block_math.attention_block``) on the kernels: ``(out, saved, aux)``, what
    :func:`backward_math` needs by name (:class:`AttentionKernelOps`). ``w``: the weights by name
    (:data:`WEIGHT_NAMES`); ``need``: which arguments want a gradient (``fused_block``)."""
    ops = AttentionKernelOps(spec, w, s1, s2, need, x, norm_triton)
    out = attention_block(ops, x)
    return out, ops.saved, ops.aux


def backward_math(spec, sink: GradSink, w: dict, saved: dict, aux: dict, dout) -> None:
    """``block_math.attention_block`` backwards on the kernels, from what :func:`forward_math` saved: the gradients
    of x, s1, s2 and the weights by name into ``sink`` (where it needs them)."""
    norm, _, _, _, bwd, split = kernels()
    p, cfg = aux['pattern'], aux['config']
    low = w['attn.qkv.weight'].dtype
    qkv, o = saved['attn.qkv'], saved['attn.o']
    b, n, c3 = qkv.shape
    c, m, heads = c3 // 3, b * n, spec.num_heads
    ln1 = saved_norm(saved, 'norm1')
    # MLP branch and the attention branch's residual: x2 = x + s1 * attn.proj(attention(attn.qkv(norm1(x))))
    dx2, dy = branches_backward(norm, sink, spec, w, saved, dout, low)     # dx2 (B, N, C) like x
    da = sink.linear(dy, o.transpose(1, 2).reshape(m, c), 'attn.proj')
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
    do = da.view(b, n, heads, c // heads).transpose(1, 2)
    *_, drpb = bwd(do, *split(qkv, heads), o, saved['attn.lse'], p.kv_num, p.kv_idx, p.q_num, p.q_idx, p.qwin,
                   p.tok, p.route, w['attn.rpb'], p.rows, aux['scale'], p.mask_mode, p.n_groups, cfg,
                   out=split(dqkv, heads))
    sink.put('attn.rpb', lambda: drpb)
    ln1_out = norm_out(ln1, w['norm1.weight'], w['norm1.bias'], low)
    dy1 = sink.linear(dqkv.view(m, c3), ln1_out, 'attn.qkv')
    dx = sink.norm(norm, dy1, ln1, 'norm1', dx2)
    sink.put('x', lambda: dx)


class AttentionBlockFunction(torch.autograd.Function):
    """``apply(x, spec, s1, s2, *weights) -> (B, N, C)`` with the weights in :data:`WEIGHT_NAMES` order (call it
    through ``fused_block.fused_apply``): the block on :func:`forward_math` / :func:`backward_math`
    (``fused_block``). Each backbone subclasses it (``FusedWindowBlock``, ``FusedNeighborhoodBlock``), so its
    autograd node carries the block's name.

    ``s1``, ``s2``: the residual branches' factors from ``ResidualDropPath.factor`` (None, a layer scale ``(C,)``
    or the stochastic-depth mask ``(B, 1, 1)``, times the layer scale if any), applied with ``spec.value1`` /
    ``value2``."""

    weight_names = WEIGHT_NAMES
    forward_math = staticmethod(forward_math)
    backward_math = staticmethod(backward_math)

    @staticmethod
    def forward(ctx, x, spec, s1, s2, *weights):
        return fused_forward(ctx, AttentionBlockFunction, x, spec, s1, s2, weights)

    @staticmethod
    def backward(ctx, dout):
        return fused_backward(ctx, dout)
