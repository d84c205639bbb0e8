"""Pieces of the NAT skeleton shared by NAT, DiNAT and HNT.

The skeleton (Hassani et al., NAT / DiNAT; HNT of the Hilbert local-attention paper) is: ``ConvTokenizer`` stem
(``layers.patch_embed``), four stages of pre-norm transformer blocks, a ``ConvDownsampler`` (``layers.downsample``)
at the end of every stage but the last. This module adds what is specific to it:

- ``NeighborhoodAttention2d``: qkv -> ``sparse_ops.neighborhood_attention_2d`` (kernel k, dilation d, relative
  position bias ``rpb (heads, 2k-1, 2k-1)``) -> proj, on channels-last maps ``(B, H, W, C)``. The dilation is clipped
  per call to what the map can hold (``clip_dilation``), so any ``H, W >= 1`` works.
- ``HilbertNeighborhoodAttention1d``: qkv -> ``sparse_ops.hilbert_neighborhood_attention_1d`` (1D NA with clamped
  centre on the Hilbert sequence, 1D relative position bias ``rpb (heads, 2K-1)``) -> proj, on token sequences
  ``(B, N, C)`` already in Hilbert order.
- ``NATBlock``: ``x + drop_path(gamma1 * attn(norm1(x)))``, ``x + drop_path(gamma2 * mlp(norm2(x)))``; ``gamma*``
  (layer scale) only when ``layer_scale`` is given. Works on any ``(..., C)`` layout; extra positional arguments go
  to the attention module. Around 2D neighbourhood attention on the Triton path it runs as one autograd node
  (``nat_fused``).
- ``NATStage``: ``blocks`` (ModuleList) + optional ``downsample``; the backbone drives the loop.
- ``init_nat_weights``: the official initialisation (trunc-normal 0.02 linears and position biases, unit LayerNorms).

Parameter names follow the official checkpoints (``levels.{i}.blocks.{j}.{norm1,attn.qkv,attn.rpb,attn.proj,norm2,
mlp.fc1,mlp.fc2,gamma1,gamma2}``, ``levels.{i}.downsample.{reduction,norm}``), so the converters only strip
prefixes, drop the classifier and move the final norm to ``norm3``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import sparse_ops

from .block_math import ModuleOps, attention_block
from .drop_path import ResidualDropPath
from .fused_block import fused_path_applies
from .init import init_linear_and_norm
from .linear import Linear
from .mlp import Mlp
from .nat_fused import fused_neighborhood_block
from .norm import PreNorm

__all__ = ['clip_dilation', 'NeighborhoodAttention2d', 'HilbertNeighborhoodAttention1d', 'NATBlock', 'NATStage',
           'init_nat_weights']


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    return value


def _check_heads(dim: int, num_heads: int) -> None:
    _check_positive_int('dim', dim)
    _check_positive_int('num_heads', num_heads)
    if dim % num_heads:
        raise ValueError(f'dim={dim} is not divisible by num_heads={num_heads}')


def _check_odd_kernel(kernel_size: int) -> int:
    _check_positive_int('kernel_size', kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be odd (neighbourhood centred on the query), got {kernel_size}')
    return kernel_size


def clip_dilation(dilation: int, kernel_size: int, height: int, width: int) -> int:
    """Largest dilation ``<= dilation`` for which a ``kernel_size`` window fits an ``height x width`` map.

    NATTEN (and the DiNAT checkpoints) need ``kernel_size * dilation <= min(H, W)``; we use
    ``max(1, min(dilation, min(H, W) // kernel_size))``. At the resolutions the official models ran at nothing
    changes; below them the dilation shrinks instead of failing (sub-grids with sides ``< kernel_size`` are then
    handled by ``neighborhood_attention_2d``, which covers the whole side).
    """
    return max(1, min(dilation, min(height, width) // kernel_size))


class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2D (dilated) neighbourhood attention on channels-last maps: ``(B, H, W, C) -> (B, H, W, C)``.

    Args:
        dim: channels ``C``.
        num_heads: heads; ``C % num_heads == 0``, head dim ``D = C // num_heads``, scale ``D ** -0.5``.
        kernel_size: odd neighbourhood side ``k``.
        dilation: NA (1) or DiNA (> 1); clipped per call by ``clip_dilation``.
        rel_pos_bias: learn ``rpb (heads, 2k-1, 2k-1)``, added at offset (key - query) in sub-grid units.
        qkv_bias: bias of the ``qkv`` projection.

    Parameters ``qkv`` (Linear C -> 3C, output laid out ``(3, heads, D)``), ``rpb``, ``proj`` (Linear C -> C):
    the names and layouts of NATTEN's ``NeighborhoodAttention2D``.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1,
                 rel_pos_bias: bool = True, qkv_bias: bool = True) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.kernel_size = _check_odd_kernel(kernel_size)
        self.dilation = _check_positive_int('dilation', dilation)
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        else:
            self.register_parameter('rpb', None)
        self.proj = Linear(dim, dim)

    def effective_dilation(self, height: int, width: int) -> int:
        """Dilation used on an ``height x width`` map (see ``clip_dilation``)."""
        return clip_dilation(self.dilation, self.kernel_size, height, width)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """The attention on the heads of ``qkv (B, H, W, 3C)`` -> ``(B, H, W, C)`` (heads merged)."""
        _, h, w, _ = qkv.shape
        return sparse_ops.qkv_attention(qkv, self.num_heads, 'na2d', self.kernel_size,
                                        dilation=self.effective_dilation(h, w), rpb=self.rpb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x)))

    def extra_repr(self) -> str:
        return (f'num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}, '
                f'rel_pos_bias={self.rpb is not None}')


class HilbertNeighborhoodAttention1d(nn.Module):
    """Multi-head 1D neighbourhood attention on a Hilbert-ordered token sequence: ``(B, N, C) -> (B, N, C)``.

    Token ``i`` is pixel ``sparse_ops.hilbert_order(H, W)[i]`` of an ``H x W`` map (``N == H * W``); each token
    attends to the ``min(kernel_size, N)`` tokens of the clamped 1D window around it.

    Args:
        dim: channels ``C``.
        num_heads: heads; ``C % num_heads == 0``, scale ``(C // num_heads) ** -0.5``.
        kernel_size: odd 1D window length ``K`` (HNT: 49).
        rel_pos_bias: learn ``rpb (heads, 2K-1)``, added at ``(key - query) + K - 1`` in sequence positions
            (NATTEN 0.14's ``NeighborhoodAttention1D``, which the official HNT uses).
        qkv_bias: bias of the ``qkv`` projection.

    Parameters ``qkv`` (Linear C -> 3C, output laid out ``(3, heads, D)``), ``rpb``, ``proj`` (Linear C -> C): names
    and layouts of NATTEN 0.14's ``NeighborhoodAttention1D``.

    The sequence bias goes through ``sparse_ops``' 2D-offset bias: laid out as a ``1 x N`` map (``hw=(1, N)``) the
    2D offset of two tokens is ``(0, j - i)``, so a ``(heads, 2K-1, 2K-1)`` table whose only non-zero row is the
    centre row ``K-1`` (= ``rpb``) adds exactly ``rpb[h, j - i + K - 1]``; the 1D window keeps ``|j - i| <= K-1``.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 49, rel_pos_bias: bool = True,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.kernel_size = _check_odd_kernel(kernel_size)
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1))
        else:
            self.register_parameter('rpb', None)
        self.proj = Linear(dim, dim)

    def _bias_table(self) -> torch.Tensor:
        """``rpb (heads, 2K-1)`` as the centre row of a ``(heads, 2K-1, 2K-1)`` 2D-offset table (zeros elsewhere)."""
        pad = self.kernel_size - 1
        return F.pad(self.rpb.unsqueeze(1), (0, 0, pad, pad))

    def attend(self, qkv: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The attention on the heads of ``qkv (B, N, 3C)`` -> ``(B, N, C)`` (heads merged), ``N == H * W``."""
        n = qkv.shape[1]
        if hw[0] * hw[1] != n:
            raise ValueError(f'hw={tuple(hw)} does not match the sequence length N={n}')
        bias = dict(rpb=self._bias_table(), hw=(1, n)) if self.rpb is not None else {}
        return sparse_ops.qkv_attention(qkv, self.num_heads, 'na1d', self.kernel_size, **bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x), hw))

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}, kernel_size={self.kernel_size}, rel_pos_bias={self.rpb is not None}'


class NATBlock(nn.Module):
    """Pre-norm transformer block around a given attention module; ``(..., C) -> (..., C)``.

    ``forward(x, *attn_args)`` computes ``x = x + drop_path(gamma1 * attn(norm1(x), *attn_args))`` and
    ``x = x + drop_path(gamma2 * mlp(norm2(x)))`` (no ``gamma*`` when ``layer_scale`` is None):
    ``block_math.attention_block`` on the modules (``attn.attend(qkv, *attn_args)`` between ``attn.qkv`` and
    ``attn.proj``), or one fused node on the Triton path. ``gamma1``,
    ``gamma2`` have shape ``(C,)`` and start at ``layer_scale``.

    Args:
        dim: channels ``C``.
        attn: attention module with ``qkv`` / ``proj`` Linears and ``attend(qkv, *attn_args)`` (heads merged).
        mlp_ratio: MLP hidden width is ``int(C * mlp_ratio)``.
        drop_path: stochastic depth rate of both residual branches.
        layer_scale: initial value of ``gamma1`` / ``gamma2``, or None for no layer scale.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 layer_scale: float | None = None) -> None:
        super().__init__()
        if not mlp_ratio > 0:
            raise ValueError(f'mlp_ratio must be > 0, got {mlp_ratio!r}')
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f'drop_path must be in [0, 1), got {drop_path!r}')
        self.norm1 = PreNorm(dim)
        self.attn = attn
        self.drop_path = ResidualDropPath(drop_path)
        self.norm2 = PreNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale is None:
            self.register_parameter('gamma1', None)
            self.register_parameter('gamma2', None)
        else:
            if isinstance(layer_scale, bool) or not isinstance(layer_scale, (int, float)) or layer_scale <= 0:
                raise ValueError(f'layer_scale must be a positive number or None, got {layer_scale!r}')
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def _fused(self, x: torch.Tensor, attn_args: tuple) -> bool:
        """Whether this call runs as one :class:`~.nat_fused.FusedNeighborhoodBlock` node: 2D neighbourhood
        attention on a ``(B, H, W, C)`` map and ``layers.fused_block.fused_path_applies`` (the Triton path, CUDA
        unless ``sparse_ops.use_backend`` says otherwise, with the Linear weights in the matmuls' dtype)."""
        if attn_args or not isinstance(self.attn, NeighborhoodAttention2d) or x.dim() != 4:
            return False
        hw = (x.shape[1], x.shape[2])
        return fused_path_applies(self, x, self.attn.qkv, None, 'na2d', hw, self._triton_runs, hw)

    def _triton_runs(self, x: torch.Tensor, low: torch.dtype, backend: str | None, hw: tuple[int, int]) -> bool:
        attn = self.attn
        b, c = x.shape[0], x.shape[-1]
        q_like = torch.empty((), dtype=low, device=x.device).expand(b, attn.num_heads, *hw, c // attn.num_heads)
        return sparse_ops.choose_backend(backend, q_like, 'na2d', kernel_size=attn.kernel_size,
                                         dilation=attn.effective_dilation(*hw), rpb=attn.rpb) == 'triton'

    def forward(self, x: torch.Tensor, *attn_args) -> torch.Tensor:
        if self._fused(x, attn_args):
            return fused_neighborhood_block(self, x)
        return attention_block(ModuleOps(self, *attn_args), x)


class NATStage(nn.Module):
    """One level of the skeleton: ``blocks`` (ModuleList of ``NATBlock``) and ``downsample`` (a
    ``ConvDownsampler`` ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)``, or None for the last stage).

    Holds modules only (official names ``levels.{i}.blocks`` / ``levels.{i}.downsample``); the backbone runs them
    because it decides the token layout (2D map or Hilbert sequence) and activation checkpointing.
    """

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


def init_nat_weights(module: nn.Module) -> None:
    """Official NAT initialisation of one module (use with ``model.apply``): Linear weights trunc-normal(0.02) with
    zero bias, LayerNorm weight 1 / bias 0, neighbourhood-attention ``rpb`` trunc-normal(0.02) (NATTEN's). Convs keep
    PyTorch's default init, as in the official code."""
    init_linear_and_norm(module)
    if isinstance(module, (NeighborhoodAttention2d, HilbertNeighborhoodAttention1d)) and module.rpb is not None:
        nn.init.trunc_normal_(module.rpb, std=0.02)
