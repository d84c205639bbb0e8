"""BiFormer building blocks (Zhu et al., CVPR 2023), written against ``sparse_ops`` routing attention.

Layouts: blocks take and return NCHW ``(B, C, H, W)``; attention modules work channels-last ``(B, H, W, C)``;
the attention core gets ``(B, heads, H, W, head_dim)``.

- ``BiLevelRoutingAttention``: qkv linear, bi-level routing attention on ``n_win x n_win`` regions (top-``topk``
  routed regions per query region), LCE (5x5 depthwise conv on V) added, output linear. Scale ``dim ** -0.5``
  (the FULL channel dim, the official convention). No zero padding, no gathered K/V copy: any H, W >= 1.
- ``GlobalAttentionLePE``: the last stage's dense attention (official ``AttentionLePE``): 8 heads, bias-free qkv,
  per-head scale, LCE on the attention *input*; runs on ``scaled_dot_product_attention``.
- ``BiFormerBlock``: ``x + pos_embed(x)`` (3x3 depthwise conv), pre-norm attention, pre-norm MLP (ratio 3),
  optional layer scale, stochastic depth.
- ``biformer_stem`` / ``biformer_downsample``: conv 3x3/s2 - BN - GELU - conv 3x3/s2 - BN; conv 3x3/s2 - BN.
- ``LayerNorm2d``: LayerNorm over C of an NCHW map (the dense wrappers' output norms, eps 1e-6).

Parameter names follow the official checkpoints except where ``backbones/converters/biformer.py`` renames them
(``attn.qkv.qkv`` -> ``attn.qkv``, ``attn.wo`` -> ``attn.proj``, ``mlp.0/3`` -> ``mlp.fc1/fc2``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch import nn

import sparse_ops

from .biformer_fused import fused_block
from .block_math import ModuleOps, routing_block
from .fused_block import fused_path_applies
from .drop_path import ResidualDropPath
from .linear import Conv2d, Linear
from .mlp import Mlp
from .norm import PreNorm

__all__ = ['BiLevelRoutingAttention', 'GlobalAttentionLePE', 'BiFormerBlock', 'LayerNorm2d', 'biformer_stem',
           'biformer_downsample', 'conv_add', 'GLOBAL', 'DWCONV_MIN_ELEMENTS']

GLOBAL = 'global'
"""``topk`` value of a stage with dense (global) attention; the official code writes it as ``-2``."""


DWCONV_MIN_ELEMENTS = 1 << 22
"""Maps of at least this many elements take ``sparse_ops.depthwise_conv2d`` on the GPU (see :func:`conv_add`)."""


def conv_add(conv: Conv2d, x: torch.Tensor, residual: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``residual + conv(x)`` for a depthwise ``conv`` and channels-last maps x, residual ``(B, H, W, C)`` (x may be
    a channel slice: channel stride 1, any pixel strides).

    With ``backend='triton'`` (or ``use_backend('triton')``), or by default on CUDA maps of >=
    ``DWCONV_MIN_ELEMENTS`` elements (BiFormer-S stages 1-2 at 1024², where native / cuDNN depthwise kernels and the
    add cost more GPU time than the fused op; on smaller maps the step waits for the host anyway), one
    ``sparse_ops.depthwise_conv2d`` call with that ``backend`` (its ``choose_kernel`` picks the Triton kernel where
    it runs; a forced 'triton' that cannot run raises there) reads x in place and adds the residual (fp32 math;
    under autocast x is first cast to autocast's dtype, as the conv would be, so the tensor saved for the backward
    keeps autocast's size). Otherwise, under ``torch.compile`` and on the twin path (``backend`` /
    ``use_backend('torch')``: the gather version keeps the official composition) the conv module on an NCHW view
    plus the add; also when x or residual has strided channels (an NCHW-contiguous map).
    """
    requested = sparse_ops.backend.requested_backend(backend, 'depthwise_conv2d')
    # a stage's first block gets an NCHW-contiguous map from the downsampling conv: its channels are strided
    channels_last = x.stride(-1) == 1 and residual.stride(-1) == 1
    if channels_last and not torch.compiler.is_compiling() and (
            requested == 'triton' or (requested is None and x.is_cuda and x.numel() >= DWCONV_MIN_ELEMENTS)):
        weight, bias = conv._low if conv._low is not None else (conv.weight, conv.bias)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))    # a no-op for V, already in that dtype
        return sparse_ops.depthwise_conv2d(x, weight, bias, residual, backend=requested)
    return residual + conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    return value


def _check_lce_kernel(kernel: int) -> int:
    _check_positive_int('side_dwconv (LCE kernel)', kernel)
    if kernel % 2 == 0:
        raise ValueError(f'side_dwconv (LCE kernel) must be odd to keep the map size, got {kernel}')
    return kernel


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention with local context enhancement: ``(B, H, W, C) -> (B, H, W, C)``.

    ``qkv = qkv(x)`` (channel order ``[q | k | v]``, each split head-major into ``num_heads`` heads), then
    ``sparse_ops.qkv_attention(qkv, num_heads, 'routing', n_win, topk, scale=C ** -0.5)`` (=
    ``bilevel_routing_attention`` on the ``(B, heads, H, W, C/heads)`` heads, merged again), plus ``lepe(v)``
    (depthwise ``side_dwconv x side_dwconv`` conv on V as an NCHW map), then ``proj``.

    Args:
        dim: channels C (official ``qk_dim == dim``).
        num_heads: heads; must divide ``dim`` (official: ``dim // 32``).
        n_win: regions per side (regions are bands of ``ceil(H / n_win)`` rows by ``ceil(W / n_win)`` columns).
        topk: routed regions per query region; clamped to ``n_win ** 2``; the attention core never routes to empty
            regions, so small maps work.
        side_dwconv: LCE kernel size (odd).
        qk_scale: attention scale; default ``dim ** -0.5`` (official: full channel dim, not per head).
        backend: forwarded to ``sparse_ops`` (``None`` = auto, ``'torch'``, ``'triton'``).
    """

    lce_on_input = False
    """The LCE convolves V (``biformer_fused.BlockSpec``)."""

    def __init__(self, dim: int, num_heads: int, n_win: int, topk: int, side_dwconv: int = 5,
                 qk_scale: float | None = None, backend: str | None = None) -> None:
        super().__init__()
        _check_positive_int('dim', dim)
        _check_positive_int('num_heads', num_heads)
        _check_positive_int('n_win', n_win)
        _check_positive_int('topk', topk)
        _check_lce_kernel(side_dwconv)
        if dim % num_heads:
            raise ValueError(f'dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}')
        if backend not in (None, 'torch', 'triton'):
            raise ValueError(f"backend must be None, 'torch' or 'triton', got {backend!r}")
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.scale = float(qk_scale) if qk_scale is not None else dim ** -0.5
        self.backend = backend
        self.qkv = Linear(dim, 3 * dim)
        self.lepe = Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.proj = Linear(dim, dim)

    @property
    def routed_topk(self) -> int:
        """``topk`` clamped to the ``n_win ** 2`` regions there are."""
        return min(self.topk, self.n_win * self.n_win)

    def attend(self, qkv: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The routing attention on the heads of ``qkv (B, H, W, 3C)`` plus ``lepe(v)`` (v: qkv's V channels)
        -> ``(B, H, W, C)``, heads concatenated head-major, as the official."""
        out = sparse_ops.qkv_attention(qkv, self.num_heads, 'routing', self.n_win, self.routed_topk, scale=self.scale,
                                       backend=self.backend)
        return conv_add(self.lepe, v, out, self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        qkv = self.qkv(x)
        return self.proj(self.attend(qkv, qkv[..., 2 * x.shape[-1]:]))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}'


class GlobalAttentionLePE(nn.Module):
    """Dense multi-head attention plus LCE on the input: ``(B, H, W, C) -> (B, H, W, C)`` (official stage 4).

    ``q, k, v = qkv(x)`` (bias-free, ``[q | k | v]``, head-major heads), ``softmax(q k^T * (C/heads) ** -0.5) v``
    over all H*W tokens, plus ``lepe(x)`` (depthwise conv on the attention input, as the official
    ``AttentionLePE``), then ``proj``. The official model builds it with the default 8 heads at every size.

    On the fused Triton path (``BiFormerBlock._fused``) the block runs as routing with one region
    (``n_win = routed_topk = 1``: the same dense attention) through ``sparse_ops``' block-sparse kernels; this
    module's own forward (the twin path, ``with_cp``) runs ``scaled_dot_product_attention``.
    """

    n_win = 1
    routed_topk = 1
    lce_on_input = True

    def __init__(self, dim: int, num_heads: int = 8, side_dwconv: int = 5) -> None:
        super().__init__()
        _check_positive_int('dim', dim)
        _check_positive_int('num_heads', num_heads)
        _check_lce_kernel(side_dwconv)
        if dim % num_heads:
            raise ValueError(f'dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}')
        self.dim, self.num_heads = dim, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.lepe = Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.proj = Linear(dim, dim)

    def attend(self, qkv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The dense attention on the heads of ``qkv (B, H, W, 3C)`` plus ``lepe(x)`` (x: the attention input)
        -> ``(B, H, W, C)``."""
        b, h, w, c3 = qkv.shape
        c = c3 // 3
        q, k, v = qkv.view(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, heads, HW, C/heads)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        return self.proj(self.attend(self.qkv(x), x))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}'


class _BlockOps(ModuleOps):
    """``block_math``'s ops on a ``BiFormerBlock``'s modules, with ``conv_add`` (the position embedding)."""

    __slots__ = ()

    def conv_add(self, name: str, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return conv_add(self.module(name), x, residual, self.block.backend)


class BiFormerBlock(nn.Module):
    """BiFormer block: ``(B, C, H, W) -> (B, C, H, W)``.

    ``x = x + pos_embed(x)``; then channels-last ``x = x + dp(g1 * attn(norm1(x)))``,
    ``x = x + dp(g2 * mlp(norm2(x)))`` (``g1, g2`` = layer scale when ``layer_scale_init_value > 0``, else 1):
    ``block_math.routing_block`` on the modules (the attention module's ``attend`` between ``attn.qkv`` and
    ``attn.proj``), or one fused node on the Triton path.

    Args:
        dim: channels.
        num_heads: heads of the routing attention (ignored by a global stage, which uses ``global_heads``).
        n_win: regions per side.
        topk: routed regions per query region, or ``GLOBAL`` (``'global'``) for dense attention with LCE.
        mlp_ratio: MLP hidden width / dim (official 3).
        drop_path: stochastic depth rate of this block.
        layer_scale_init_value: > 0 enables ``gamma1`` / ``gamma2``; None or <= 0 disables (official presets).
        side_dwconv: LCE kernel (official 5). global_heads: heads of a global stage (official 8).
        backend: ``sparse_ops`` backend of the routing attention.
    """

    def __init__(self, dim: int, num_heads: int, n_win: int, topk: int | str, mlp_ratio: float = 3.0,
                 drop_path: float = 0.0, layer_scale_init_value: float | None = None, side_dwconv: int = 5,
                 global_heads: int = 8, backend: str | None = None) -> None:
        super().__init__()
        if not float(mlp_ratio) > 0:
            raise ValueError(f'mlp_ratio must be > 0, got {mlp_ratio!r}')
        if not 0.0 <= float(drop_path) < 1.0:
            raise ValueError(f'drop_path must be in [0, 1), got {drop_path!r}')
        self.backend = backend
        self.pos_embed = Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = PreNorm(dim, eps=1e-6)
        if topk == GLOBAL:
            self.attn = GlobalAttentionLePE(dim, num_heads=global_heads, side_dwconv=side_dwconv)
        else:
            self.attn = BiLevelRoutingAttention(dim, num_heads, n_win, topk, side_dwconv=side_dwconv,
                                                backend=backend)
        self.norm2 = PreNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.drop_path = ResidualDropPath(drop_path)
        if layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma1 = self.gamma2 = None

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether this call runs as one :class:`~.biformer_fused.FusedRoutingBlock` node: the Triton path (for
        the global block: routing with one region) with the Linear / conv weights in the matmuls' dtype
        (``fused_block.fused_path_applies``)."""
        return fused_path_applies(self, x, self.attn.qkv, self.backend, 'routing', (), self._triton_runs)

    def _triton_runs(self, x: torch.Tensor, low: torch.dtype, backend: str | None) -> bool:
        b, h, w, c = x.shape
        heads = self.attn.num_heads
        q_like = torch.empty((), dtype=low, device=x.device).expand(b, heads, h, w, c // heads)
        if isinstance(self.attn, GlobalAttentionLePE) and backend == 'triton':
            # the global block runs without sparse_ops unfused: a forced 'triton' fuses it only where it can run
            return sparse_ops.can_run_triton(q_like, pattern='routing', n_win=1, topk=1)
        return sparse_ops.choose_backend(backend, q_like, 'routing', n_win=self.attn.n_win,
                                         topk=self.attn.routed_topk) == 'triton'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        x = x.permute(0, 2, 3, 1)
        if self._fused(x):
            return fused_block(self, x).permute(0, 3, 1, 2)
        return routing_block(_BlockOps(self), x, self.attn.lce_on_input).permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map: ``(B, C, H, W) -> (B, C, H, W)`` (timm's, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _norm(norm_cfg: dict, channels: int) -> nn.Module:
    return build_norm_layer(norm_cfg, channels)[1]


def biformer_stem(in_channels: int, dim: int, norm_cfg: dict | None = None) -> nn.Sequential:
    """Conv stem ``(B, in_channels, H, W) -> (B, dim, ceil(ceil(H/2)/2), ceil(ceil(W/2)/2))``.

    Indices match the official ``downsample_layers.0``: 0 conv3x3/s2 (-> dim/2), 1 BN, 2 GELU, 3 conv3x3/s2, 4 BN.
    """
    norm_cfg = norm_cfg or dict(type='BN')
    return nn.Sequential(
        nn.Conv2d(in_channels, dim // 2, 3, stride=2, padding=1), _norm(norm_cfg, dim // 2), nn.GELU(),
        nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), _norm(norm_cfg, dim))


def biformer_downsample(in_dim: int, out_dim: int, norm_cfg: dict | None = None) -> nn.Sequential:
    """``(B, in_dim, H, W) -> (B, out_dim, ceil(H/2), ceil(W/2))``: 0 conv3x3/s2, 1 BN (official indices)."""
    norm_cfg = norm_cfg or dict(type='BN')
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1), _norm(norm_cfg, out_dim))
