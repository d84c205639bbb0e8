"""A whole HWT block as one autograd node on the Triton path (``fused_window_block``).

The block ``x -> x + attn(ln1(x)) -> x + mlp(ln2(x))`` with Hilbert window attention and its 2D position bias:
``block_math.attention_block`` run by ``attn_block_fused``'s kernel ops and backward (why, and how it matches the
module composition in ``backbones/hwt.py``, is said there).

Shapes: x ``(B, N, C)`` Hilbert tokens (channel stride 1); weights as the modules hold them (Linear weights and
biases pre-cast by ``layers.linear.cast_linear_weights``), the position-bias table ``(heads, 2R+1, 2R+1)`` in fp32;
returns ``(B, N, C)`` like x.
"""
from __future__ import annotations

import dataclasses

import torch

from .attn_block_fused import AttentionBlockFunction, block_weights, kernels
from .fused_block import cached_spec, fused_apply, norm_eps

__all__ = ['FusedWindowBlock', 'WindowBlockSpec', 'fused_window_block']


@dataclasses.dataclass(frozen=True)
class WindowBlockSpec:
    """The non-tensor arguments of :class:`FusedWindowBlock`."""
    num_heads: int
    window: int             # tokens per chunk (HilbertWindowAttention.chunking: window_size ** 2 or min(H, W) ** 2)
    shift: bool             # chunk boundaries at window - window // 2 + m * window
    hw: tuple               # (H, W) of the stage's map (the position bias's pixel offsets)
    eps: tuple              # (('norm1', eps), ('norm2', eps))
    value1: float           # addcmul value of the two residual branches (1 / keep_prob, or 1)
    value2: float

    def plan(self, n: int, head_dim: int, device: torch.device):
        """The (cached) Hilbert-window pattern of the block's chunks, with token coordinates for the bias, and its
        kernel config."""
        _, patterns, default_config, *_ = kernels()
        cfg = default_config(head_dim, device, patterns.MASK_INTERVAL)
        return patterns.hilbert_window_pattern(n, self.window, self.shift, cfg.block_m, cfg.block_n, device,
                                               hw=self.hw), cfg


class FusedWindowBlock(AttentionBlockFunction):
    """``apply(x, spec, s1, s2, *weights) -> (B, N, C)``: an HWT block (module docstring;
    arguments as :class:`~.attn_block_fused.AttentionBlockFunction`, ``spec`` a :class:`WindowBlockSpec`)."""


def _spec(block, hw: tuple, v1: float, v2: float) -> WindowBlockSpec:
    """The block's :class:`WindowBlockSpec` for the map size hw and branch values v1, v2 (cached on the block)."""
    attn = block.attn
    return cached_spec(block, (hw, v1, v2), lambda: WindowBlockSpec(
        attn.num_heads, *attn.chunking(hw), hw, norm_eps(block), v1, v2))


def fused_window_block(block, x: torch.Tensor, hw: tuple) -> torch.Tensor:
    """``block`` (an ``HWTBlock``) on the Hilbert tokens x ``(B, N, C)`` of an ``hw = (H, W)`` map through
    :class:`FusedWindowBlock`; the caller has checked that it applies (``HWTBlock._fused``)."""
    s1, v1 = block.drop_path.factor(x)
    s2, v2 = block.drop_path.factor(x)
    weights = block_weights(block, block.attn.relative_position_bias_table)
    return fused_apply(FusedWindowBlock, x, _spec(block, hw, v1, v2), s1, s2, weights)
