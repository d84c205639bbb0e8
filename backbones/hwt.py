"""HWT: Hilbert Window Transformer (Swin layout with windows of consecutive Hilbert-curve tokens).

Structure (parameter names follow the official Hilbert-Local-Attention ``hwt.py`` so its checkpoints convert with
``backbones/converters/hwt.py``)::

    patch_embed            PatchEmbed 4x4/s4 conv + LayerNorm                 (B, 3, H, W) -> (B, H/4, W/4, C)
    layers[i].blocks[j]    HWTBlock: pre-norm Hilbert window attention + MLP   tokens (B, N_i, C_i), Hilbert order
    layers[i].downsample   PatchMerging (stages 0..n-2)                        (B, H_i, W_i, C_i) -> (..., 2 C_i)
    norm{i}                LayerNorm on the output of stage i (only for i in out_indices, like mmdet's Swin)

Each stage reorders its map into Hilbert order ONCE, runs all blocks on the token sequence and maps back. Block j
attends within chunks of ``window_size**2`` consecutive tokens; odd blocks shift the chunk boundaries to
``ceil(L/2) + m*L`` for ``L = window_size**2`` (``sparse_ops.hilbert_window_attention(..., shift=True)``; the
official block rolls the sequence by ``+L//2``, so its first chunk holds ``ceil(L/2)`` tokens). Small maps follow
the official (Swin) rule: when ``min(H, W) <= window_size`` no block shifts and the window becomes the whole short
side, ``min(H, W)**2`` tokens (:meth:`HilbertWindowAttention.chunking`). The ragged last chunk is masked by the op,
nothing is truncated or padded, so any H, W >= 1 works (the official code needs ``H*W`` divisible by the window).

Relative position bias: a per-block table ``(heads, 2R+1, 2R+1)`` looked up by the 2D offset ``key - query`` of the
tokens' pixels, with ``R = window_size**2 - 1`` (:func:`bias_radius`). Why R: consecutive cells of the curve differ
by at most one pixel per axis (``sparse_ops.hilbert``: 4-neighbour steps and at most one diagonal one), and two
tokens of one window (at most ``window_size**2`` consecutive tokens, also under the small-map rule) are at most
``window_size**2 - 1`` steps apart; so every offset that can occur inside a window has its own entry, for every
input size, and the op's clamp never acts. The official table is ``(2H-1)(2W-1)`` rows for the fixed training
H x W of each stage (indexed by ``query - key``); ``backbones/converters/hwt.py`` takes its entries for the offsets
both tables hold and fills the others from the nearest official entry.

On the Triton path (CUDA) each block runs as one autograd node with a hand-written backward
(``layers/hwt_fused.py``), and with ``cuda_graphs`` a training step whose input size repeats is replayed as CUDA
graphs (``graphs.py``); the twin path (CPU, ``sparse_ops.use_backend('torch')``) is the module
composition below. Both follow the one description of the block's math, ``layers/block_math.py``.

Presets (Swin-T/S/B layout, window 7 -> 49-token chunks, MLP ratio 4). ``drop_path_rate=None`` uses the preset's
value: tiny 0.2, small 0.3, base 0.5 (Swin's ImageNet values); an arch dict without it uses 0.1.
Differences from the official classifier: no classification head / final avgpool; no dropout / attention dropout
(the official models train with 0); the final ``norm`` is ``norm{last}`` here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

import sparse_ops

from .base import MODELS, SparseBackbone, drop_path_schedule, resolve_arch
from .layers import (Linear, Mlp, PatchEmbed, PatchMerging, PreNorm, ResidualDropPath, from_hilbert, nhwc_to_nchw,
                     to_hilbert)
from .layers.block_math import ModuleOps, attention_block
from .layers.fused_block import fused_path_applies
from .layers.hwt_fused import fused_window_block
from .layers.init import init_linear_and_norm

__all__ = ['HWT', 'HWTBlock', 'HWTStage', 'HilbertWindowAttention', 'HWT_PRESETS', 'bias_radius']

HWT_PRESETS = {
    'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 drop_path_rate=0.2),
    'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                  drop_path_rate=0.3),
    'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7, mlp_ratio=4.0,
                 drop_path_rate=0.5),
}
_ARCH_REQUIRED = ('embed_dims', 'depths', 'num_heads', 'window_size', 'mlp_ratio')
_ARCH_DEFAULTS = dict(drop_path_rate=0.1)


def bias_radius(window_size: int) -> int:
    """Largest ``|dy|`` or ``|dx|`` between two tokens of one Hilbert window of ``window_size**2`` tokens, for any
    map size: ``window_size**2 - 1`` (module docstring). The bias table is ``(heads, 2R+1, 2R+1)``."""
    return window_size * window_size - 1


class HilbertWindowAttention(nn.Module):
    """Multi-head attention within chunks of ``window_size**2`` consecutive Hilbert tokens, with a 2D relative
    position bias covering every offset inside a window.

    ``forward(x: (B, N, C), hw=(H, W))`` with ``N == H*W`` tokens in ``sparse_ops.hilbert_order(H, W)`` order
    returns ``(B, N, C)``; the chunks for that map size are :meth:`chunking`.

    Parameters: ``qkv`` (Linear C -> 3C), ``proj`` (Linear C -> C),
    ``relative_position_bias_table`` ``(num_heads, 2R+1, 2R+1)``, ``R = bias_radius(window_size)``.
    """

    def __init__(self, dims: int, num_heads: int, window_size: int, shift: bool, qkv_bias: bool = True) -> None:
        super().__init__()
        if dims % num_heads:
            raise ValueError(f'dims={dims} is not divisible by num_heads={num_heads}')
        self.dims, self.num_heads, self.window_size, self.shift = dims, num_heads, window_size, shift
        self.qkv = Linear(dims, 3 * dims, bias=qkv_bias)
        self.proj = Linear(dims, dims)
        side = 2 * bias_radius(window_size) + 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_heads, side, side))

    def chunking(self, hw: tuple[int, int]) -> tuple[int, bool]:
        """``(tokens per chunk, shifted)`` on an ``hw = (H, W)`` map: ``(window_size**2, self.shift)``, or, when
        ``min(H, W) <= window_size`` (the official rule), ``(min(H, W)**2, False)``."""
        short = min(hw)
        if short <= self.window_size:
            return short * short, False
        return self.window_size ** 2, self.shift

    def attend(self, qkv: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The attention on the heads of ``qkv (B, N, 3C)`` -> ``(B, N, C)`` (heads merged)."""
        window, shift = self.chunking(hw)
        return sparse_ops.qkv_attention(qkv, self.num_heads, 'window', window, shift=shift,
                                        rpb=self.relative_position_bias_table, hw=tuple(hw))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x), hw))

    def extra_repr(self) -> str:
        return f'dims={self.dims}, num_heads={self.num_heads}, window={self.window_size}**2, shift={self.shift}'


class HWTBlock(nn.Module):
    """Pre-norm transformer block on Hilbert tokens: ``x + DP(attn(norm1(x)))``, then ``x + DP(mlp(norm2(x)))``
    (``layers.block_math.attention_block``: the module composition, or one fused node on the Triton path).

    ``forward(x: (B, N, C), hw=(H, W)) -> (B, N, C)``. ``shift`` (odd blocks) moves the chunk boundaries by
    ``ceil(L/2)`` tokens, except on small maps (:meth:`HilbertWindowAttention.chunking`).
    """

    def __init__(self, dims: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = PreNorm(dims)
        self.attn = HilbertWindowAttention(dims, num_heads, window_size, shift)
        self.drop_path = ResidualDropPath(drop_path)
        self.norm2 = PreNorm(dims)
        self.mlp = Mlp(dims, int(dims * mlp_ratio))

    def _fused(self, x: torch.Tensor, hw: tuple[int, int]) -> bool:
        """Whether this call runs as one :class:`~.layers.hwt_fused.FusedWindowBlock` node
        (``layers.fused_block.fused_path_applies``: the Triton path, CUDA unless ``sparse_ops.use_backend`` says
        otherwise, with the Linear weights in the matmuls' dtype)."""
        return fused_path_applies(self, x, self.attn.qkv, None, 'window', hw, self._triton_runs, hw)

    def _triton_runs(self, x: torch.Tensor, low: torch.dtype, backend: str | None, hw: tuple[int, int]) -> bool:
        attn = self.attn
        b, n, c = x.shape
        q_like = torch.empty((), dtype=low, device=x.device).expand(b, attn.num_heads, n, c // attn.num_heads)
        window, shift = attn.chunking(hw)
        return sparse_ops.choose_backend(backend, q_like, 'window', window=window, shift=shift,
                                         rpb=attn.relative_position_bias_table, hw=hw) == 'triton'

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self._fused(x, hw):
            return fused_window_block(self, x, tuple(hw))
        return attention_block(ModuleOps(self, hw), x)


class HWTStage(nn.Module):
    """One stage: ``blocks`` (alternating plain / shifted chunks) and an optional ``downsample`` (PatchMerging).

    The backbone drives it (so ``with_cp`` can wrap each block): ``run_blocks`` maps channels-last
    ``(B, H, W, C)`` to Hilbert tokens once, applies the blocks and maps back to ``(B, H, W, C)``.
    """

    def __init__(self, dims: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            HWTBlock(dims, num_heads, window_size, shift=bool(j % 2), mlp_ratio=mlp_ratio, drop_path=drop_path[j])
            for j in range(depth))
        self.downsample = PatchMerging(dims) if downsample else None

    def run_blocks(self, x: torch.Tensor, call: Callable | None = None) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; ``call(block, tokens, hw)`` runs one block (default: direct call)."""
        hw = (x.shape[1], x.shape[2])
        tokens = to_hilbert(x, channels_last=True)
        for block in self.blocks:
            tokens = call(block, tokens, hw) if call is not None else block(tokens, hw)
        return from_hilbert(tokens, hw, channels_last=True)


@MODELS.register_module()
class HWT(SparseBackbone):
    """Hilbert Window Transformer backbone.

    Args:
        arch: ``'tiny' | 'small' | 'base'`` or a dict with ``embed_dims, depths, num_heads, window_size, mlp_ratio``
            (optional ``drop_path_rate``). ``len(depths)`` stages; stage i has ``embed_dims * 2**i`` channels.
        in_channels, out_indices, frozen_stages, norm_eval, with_cp, init_cfg: see ``SparseBackbone``.
        drop_path_rate: stochastic depth rate of the last block (linear schedule); None: the arch's value.
        cuda_graphs: see ``SparseBackbone``.

    ``forward(x: (B, in_channels, H, W) float)`` returns a tuple with one ``(B, embed_dims * 2**i, ceil(H / 2**(i+2)),
    ceil(W / 2**(i+2)))`` map per ``i`` in ``out_indices`` (strides 4, 8, 16, 32), for any H, W >= 1.
    """

    def __init__(self, arch: str | dict = 'tiny', in_channels: int = 3,
                 out_indices: int | Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, drop_path_rate: float | None = None, cuda_graphs: bool = True,
                 init_cfg: dict | list[dict] | None = None) -> None:
        cfg = resolve_arch(arch, HWT_PRESETS, required=_ARCH_REQUIRED, defaults=_ARCH_DEFAULTS)
        depths, num_heads = tuple(cfg['depths']), tuple(cfg['num_heads'])
        if not depths or len(depths) != len(num_heads):
            raise ValueError(f'arch depths {depths} and num_heads {num_heads} must be non-empty and of equal length')
        for key, values in (('depths', depths), ('num_heads', num_heads), ('embed_dims', (cfg['embed_dims'],))):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f'arch {key} must be positive ints, got {cfg[key]!r}')
        if not isinstance(cfg['window_size'], int) or cfg['window_size'] < 1:
            raise ValueError(f"arch window_size must be a positive int, got {cfg['window_size']!r}")
        if isinstance(cfg['mlp_ratio'], bool) or not isinstance(cfg['mlp_ratio'], (int, float)) \
                or not cfg['mlp_ratio'] > 0:
            raise ValueError(f"arch mlp_ratio must be > 0, got {cfg['mlp_ratio']!r}")
        embed_dims = cfg['embed_dims']
        dims = [embed_dims * 2 ** i for i in range(len(depths))]
        for i, (d, h) in enumerate(zip(dims, num_heads)):
            if d % h:
                raise ValueError(f'stage {i}: {d} channels are not divisible by num_heads={h}')
        super().__init__(num_stages=len(depths), in_channels=in_channels, out_indices=out_indices,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, with_cp=with_cp,
                         cuda_graphs=cuda_graphs, init_cfg=init_cfg)
        self.arch = cfg
        self.embed_dims, self.depths, self.num_heads = embed_dims, depths, num_heads
        self.window_size, self.mlp_ratio = cfg['window_size'], cfg['mlp_ratio']
        self.drop_path_rate = cfg['drop_path_rate'] if drop_path_rate is None else drop_path_rate
        self.num_features = tuple(dims)

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size=4)
        rates = drop_path_schedule(self.drop_path_rate, depths)
        self.layers = nn.ModuleList(
            HWTStage(dims[i], depths[i], num_heads[i], self.window_size, self.mlp_ratio, rates[i],
                     downsample=i < len(depths) - 1)
            for i in range(len(depths)))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))
        self._freeze_stages()

    def _stem_modules(self) -> list[nn.Module]:
        return [self.patch_embed]

    def _stage_modules(self, i: int) -> list[nn.Module]:
        return [self.layers[i]] + ([getattr(self, f'norm{i}')] if i in self.out_indices else [])

    def init_weights(self) -> None:
        """Swin's init (trunc-normal 0.02 Linear weights and bias tables, zero biases, unit LayerNorms), then the
        ``init_cfg`` (e.g. ``Pretrained`` / ``ConvertedPretrained``) through MMEngine."""
        if not self._is_init:
            for module in self.modules():
                init_linear_and_norm(module)
                if isinstance(module, HilbertWindowAttention):
                    nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
        super().init_weights()

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage.run_blocks(x, call=self.checkpointed)
            if i in self.out_indices:
                outs.append(nhwc_to_nchw(getattr(self, f'norm{i}')(x)))
            if stage.downsample is not None:
                x = stage.downsample(x)
        return tuple(outs)
