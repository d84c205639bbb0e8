"""A whole NAT / DiNAT block as one autograd node on the Triton path (``fused_neighborhood_block``).

The block ``x -> x + g1 * attn(ln1(x)) -> x + g2 * mlp(ln2(x))`` (``g*``: the layer scale, or none) with exact 2D
(dilated) neighbourhood attention and its relative position bias: ``block_math.attention_block`` run by
``attn_block_fused``'s kernel ops and backward (why, and how it matches the module composition in
``layers/nat_blocks.py``, is said there). The attention reads the row-major map through the na2d pattern's
``rows`` (sub-grid-major Hilbert order), as
``sparse_ops.neighborhood_attention_2d`` does.

Shapes: x ``(B, H, W, C)`` channels-last map, seen as ``(B, H * W, C)`` tokens inside; weights as the modules hold
them (Linear weights and biases pre-cast by ``layers.linear.cast_linear_weights``), ``rpb (heads, 2k-1, 2k-1)``
(or None) in fp32, the layer scales ``(C,)``; returns ``(B, H, W, C)`` like x.
"""
from __future__ import annotations

import dataclasses

import torch

from .attn_block_fused import AttentionBlockFunction, block_weights, kernels
from .fused_block import cached_spec, fused_apply, norm_eps

__all__ = ['FusedNeighborhoodBlock', 'NeighborhoodBlockSpec', 'fused_neighborhood_block']


@dataclasses.dataclass(frozen=True)
class NeighborhoodBlockSpec:
    """The non-tensor arguments of :class:`FusedNeighborhoodBlock`."""
    num_heads: int
    kernel_size: int        # neighbourhood side k
    dilation: int           # the dilation used on this map (``NeighborhoodAttention2d.effective_dilation``)
    hw: tuple               # (H, W) of the map
    eps: tuple              # (('norm1', eps), ('norm2', eps))
    value1: float           # addcmul value of the two residual branches (1 / keep_prob, or 1)
    value2: float

    def plan(self, n: int, head_dim: int, device: torch.device):
        """The (cached) na2d pattern of the map, with sub-grid coordinates for the bias, and its kernel config."""
        _, patterns, default_config, *_ = kernels()
        cfg = default_config(head_dim, device, patterns.MASK_GRID2D)
        return patterns.na2d_pattern(*self.hw, self.kernel_size, self.dilation, cfg.block_m, cfg.block_n,
                                     device), cfg


class FusedNeighborhoodBlock(AttentionBlockFunction):
    """``apply(x, spec, s1, s2, *weights) -> (B, N, C)`` on tokens x ``(B, N, C)``: a NAT block
    (module docstring; arguments as :class:`~.attn_block_fused.AttentionBlockFunction`, ``spec`` a
    :class:`NeighborhoodBlockSpec`)."""


def _spec(block, hw: tuple, v1: float, v2: float) -> NeighborhoodBlockSpec:
    """The block's :class:`NeighborhoodBlockSpec` for the map size hw and branch values v1, v2 (cached on the
    block)."""
    attn = block.attn
    return cached_spec(block, (hw, v1, v2), lambda: NeighborhoodBlockSpec(
        attn.num_heads, attn.kernel_size, attn.effective_dilation(*hw), hw, norm_eps(block), v1, v2))


def fused_neighborhood_block(block, x: torch.Tensor) -> torch.Tensor:
    """``block`` (a ``NATBlock`` around ``NeighborhoodAttention2d``) on the map x ``(B, H, W, C)`` through
    :class:`FusedNeighborhoodBlock`; the caller has checked that it applies (``NATBlock._fused``)."""
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    s1, v1 = block.drop_path.factor(tokens, block.gamma1)
    s2, v2 = block.drop_path.factor(tokens, block.gamma2)
    out = fused_apply(FusedNeighborhoodBlock, tokens, _spec(block, (h, w), v1, v2), s1, s2,
                      block_weights(block, block.attn.rpb))
    return out.view(b, h, w, c)
