"""The math of the backbones' transformer blocks, written once against a small ``ops`` interface that every path
of a block follows.

Two implementations of ``ops``:

- :class:`ModuleOps`: the block's own modules (``PreNorm``, ``Linear``, ``Mlp``, ``ResidualDropPath``, the
  attention module's ``attend``: ``sparse_ops`` ops); autograd records the backward. The twin path (CPU), the
  Triton composition, ``torch.compile`` and ``with_cp`` outside the fused node.
- the fused nodes' kernel ops (``fused_block.KernelOps`` and its subclasses in ``attn_block_fused`` /
  ``biformer_fused``): the Triton kernels called directly inside one autograd Function; each op records what the
  Function's hand-written backward needs.

The interface (``name``: the module path in the block, as its parameters are named; x ``(B, ..., C)``):

- ``norm(name, x)``: the LayerNorm ``name``;
- ``linear(name, x)``: the Linear ``name``;
- ``attention(qkv, *lce)``: the block's attention on the heads of the fused projection ``qkv (B, ..., 3C)``
  (channels ``[q | k | v]``), heads merged, ``(B, ..., C)``; BiFormer adds its LCE, the depthwise conv
  ``attn.lepe`` of ``lce[0]``;
- ``residual(i, x, y)``: residual branch ``i`` (1: attention, 2: MLP), ``x + drop_path(gamma_i * y)``;
- ``mlp(x)``: ``mlp.fc2(gelu(mlp.fc1(x)))``;
- ``conv_add(name, x, residual)`` (BiFormer): ``residual + conv(x)`` for the depthwise conv ``name``.
"""
from __future__ import annotations

import torch

__all__ = ['attention_block', 'routing_block', 'ModuleOps']


def attention_block(ops, x: torch.Tensor) -> torch.Tensor:
    """A pre-norm attention block (HWT, NAT, DiNAT, HNT): ``x2 = x + s1 * attn.proj(attention(attn.qkv(norm1(x))))``,
    then ``x2 + s2 * mlp(norm2(x2))``. x ``(B, ..., C)`` -> like x."""
    y = ops.linear('attn.proj', ops.attention(ops.linear('attn.qkv', ops.norm('norm1', x))))
    x = ops.residual(1, x, y)
    return ops.residual(2, x, ops.mlp(ops.norm('norm2', x)))


def routing_block(ops, x: torch.Tensor, lce_on_input: bool) -> torch.Tensor:
    """A BiFormer block: ``x1 = x + pos_embed(x)``, ``h = norm1(x1)``, ``qkv = attn.qkv(h)``,
    ``x2 = x1 + s1 * attn.proj(attention(qkv) + attn.lepe(h if lce_on_input else v))``, then
    ``x2 + s2 * mlp(norm2(x2))``. x channels-last ``(B, H, W, C)`` -> like x."""
    x = ops.conv_add('pos_embed', x, x)
    h = ops.norm('norm1', x)
    qkv = ops.linear('attn.qkv', h)
    c = h.shape[-1]
    y = ops.linear('attn.proj', ops.attention(qkv, h if lce_on_input else qkv[..., 2 * c:]))
    x = ops.residual(1, x, y)
    return ops.residual(2, x, ops.mlp(ops.norm('norm2', x)))


class ModuleOps:
    """The ``ops`` of a block's module composition: each op calls the block's module of that name
    (``attention``: ``block.attn.attend(qkv, *lce, *attn_args)``; ``residual(i, ...)``:
    ``block.drop_path(x, y, block.gamma{i})``, no layer scale where the block has none)."""

    __slots__ = ('block', 'attn_args')

    def __init__(self, block, *attn_args) -> None:
        self.block, self.attn_args = block, attn_args

    def module(self, name: str):
        """The block's submodule at the dotted path ``name``."""
        module = self.block
        for part in name.split('.'):
            module = getattr(module, part)
        return module

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.module(name)(x)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.module(name)(x)

    def attention(self, qkv: torch.Tensor, *lce) -> torch.Tensor:
        return self.block.attn.attend(qkv, *lce, *self.attn_args)

    def residual(self, i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.block.drop_path(x, y, getattr(self.block, f'gamma{i}', None))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.mlp(x)
