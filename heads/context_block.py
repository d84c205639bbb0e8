"""Sparse-attention context block for dense-prediction heads.

One residual block that adds long-range (routing) or chunk-local (Hilbert window) context to an NCHW feature map
through `sparse_ops`, at a cost linear in the number of pixels:

    x: (B, C, H, W)
    x = x + dwconv3x3(x)                                   conditional position encoding (any H, W)
    t = LayerNorm(x) as (B, H, W, C) -> Linear(C, 3E) -> q, k, v      E = embed_dims = heads * head_dim
    routing: q, k, v (B, heads, H, W, D) -> sparse_ops.bilevel_routing_attention
    hilbert: q, k, v (B, heads, N, D), N = H*W in Hilbert order -> sparse_ops.hilbert_window_attention
    x = x + gamma * Linear(E, C)(attention)               gamma: per-channel layer scale
    returns (B, C, H, W)

Routing regions have a fixed size in pixels (`region_size`): the number of regions per side grows with the map, so
every query attends to at most `topk * region_size**2` keys whatever the input size (linear cost). Alternatively a
fixed `n_win` (BiFormer's convention, cost grows quadratically with the side).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import nn

import sparse_ops

AttnMode = Literal['routing', 'hilbert']
_MODES = ('routing', 'hilbert')


class SparseContextAttention(nn.Module):
    """Pre-norm sparse attention with a residual and layer scale on an NCHW map.

    Args:
        channels: C of the input and output map.
        mode: 'routing' (bi-level routing attention: global reach through top-k routed regions) or 'hilbert'
            (attention inside chunks of `window` consecutive tokens of the Hilbert curve; `shift` moves the chunk
            boundaries by window // 2).
        embed_dims: E, width of q/k/v (defaults to C); must be a multiple of `head_dim`.
        head_dim: D per head.
        region_size: routing regions are about region_size x region_size pixels (n_win = ceil(max(H, W) / size)).
        n_win: fixed number of regions per side instead of region_size (exactly one of the two must be set).
        topk: routed regions per query region (clipped to the number of regions).
        window: Hilbert chunk length in tokens.
        shift: shifted Hilbert chunks.
        layer_scale: initial value of the per-channel residual scale gamma.
        backend: passed to sparse_ops ('triton' | 'torch' | None = automatic).
    """

    def __init__(self, channels: int, mode: AttnMode = 'routing', embed_dims: Optional[int] = None,
                 head_dim: int = 32, region_size: Optional[int] = 16, n_win: Optional[int] = None, topk: int = 4,
                 window: int = 256, shift: bool = False, layer_scale: float = 1e-1,
                 backend: Optional[str] = None):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f'mode must be one of {_MODES}, got {mode=}')
        embed_dims = channels if embed_dims is None else embed_dims
        if embed_dims % head_dim:
            raise ValueError(f'embed_dims must be a multiple of head_dim, got {embed_dims=} {head_dim=}')
        if mode == 'routing' and (region_size is None) == (n_win is None):
            raise ValueError(f'routing needs exactly one of region_size / n_win, got {region_size=} {n_win=}')
        if mode == 'routing' and topk < 1:
            raise ValueError(f'topk must be >= 1, got {topk=}')
        if mode == 'hilbert' and window < 1:
            raise ValueError(f'window must be >= 1, got {window=}')
        self.mode, self.num_heads, self.head_dim = mode, embed_dims // head_dim, head_dim
        self.region_size, self.n_win, self.topk = region_size, n_win, topk
        self.window, self.shift, self.backend = window, shift, backend
        self.pos_embed = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * embed_dims)
        self.proj = nn.Linear(embed_dims, channels)
        self.gamma = nn.Parameter(torch.full((channels, ), float(layer_scale)))

    def regions_per_side(self, h: int, w: int) -> int:
        """Routing grid n_win for an h x w map."""
        if self.n_win is not None:
            return self.n_win
        return max(1, math.ceil(max(h, w) / self.region_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        if x.ndim != 4:
            raise ValueError(f'expected an NCHW map, got shape {tuple(x.shape)}')
        b, c, h, w = x.shape
        x = x + self.pos_embed(x)
        tokens = self.norm(x.permute(0, 2, 3, 1))  # (B, H, W, C)
        qkv = self.qkv(tokens)  # (B, H, W, 3E)
        if self.mode == 'routing':
            out = self._routing(qkv)
        else:
            out = self._hilbert(qkv)
        out = self.proj(out) * self.gamma  # (B, H, W, C)
        return x + out.permute(0, 3, 1, 2).to(x.dtype)

    def _routing(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (B, H, W, 3E) -> (B, H, W, E) through bilevel_routing_attention on (B, heads, H, W, D)."""
        b, h, w, _ = qkv.shape
        q, k, v = qkv.view(b, h, w, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5).unbind(0)
        n_win = self.regions_per_side(h, w)
        topk = min(self.topk, n_win * n_win)
        out = sparse_ops.bilevel_routing_attention(q, k, v, n_win, topk, backend=self.backend)
        return out.permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)

    def _hilbert(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (B, H, W, 3E) -> (B, H, W, E) through hilbert_window_attention on (B, heads, N, D), Hilbert order."""
        b, h, w, _ = qkv.shape
        order = sparse_ops.hilbert_order(h, w, device=qkv.device)  # sequence position -> row-major pixel
        seq = qkv.reshape(b, h * w, -1).index_select(1, order)
        q, k, v = seq.view(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = sparse_ops.hilbert_window_attention(q, k, v, self.window, shift=self.shift, backend=self.backend)
        out = out.transpose(1, 2).reshape(b, h * w, -1)  # (B, N, E), Hilbert order
        restored = torch.empty_like(out).index_copy_(1, order, out)  # back to row-major
        return restored.view(b, h, w, -1)


class SparseContext(nn.Sequential):
    """`num_blocks` SparseContextAttention blocks; in 'hilbert' mode the odd blocks use shifted chunks so that
    information crosses chunk boundaries (as in HWT). (B, C, H, W) -> (B, C, H, W).

    Args: channels, num_blocks, and the keyword arguments of SparseContextAttention (except `shift`).
    """

    def __init__(self, channels: int, num_blocks: int = 1, **attn_kwargs):
        if num_blocks < 1:
            raise ValueError(f'num_blocks must be >= 1, got {num_blocks=}')
        if 'shift' in attn_kwargs:
            raise ValueError('shift is set per block by SparseContext (odd blocks shifted); do not pass it')
        super().__init__(*[
            SparseContextAttention(channels, shift=bool(i % 2), **attn_kwargs) for i in range(num_blocks)
        ])
