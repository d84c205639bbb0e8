"""BiFormer backbone (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023).

Four stages of ``BiFormerBlock`` (3x3 depthwise pos-embed, bi-level routing attention with LCE, MLP ratio 3) after
a conv stem (stride 4) and conv downsamplers (stride 2); the last stage uses dense attention. Returns a tuple of
NCHW maps, each through its own LayerNorm2d like the official dense wrappers (``extra_norms``).

Unlike the official dense configs (``auto_pad=True``: zero-pad every map to a multiple of ``n_win`` and attend to
the zeros), routing regions are bands of ``ceil(H / n_win)`` rows / ``ceil(W / n_win)`` columns over real tokens
only (``sparse_ops.bilevel_routing_attention``): any H, W >= 1, nothing padded into the softmax, nothing truncated.
At map sizes divisible by ``n_win`` the math equals the official model's.

Presets (``models/biformer.py`` of rayleizhu/BiFormer: ``biformer_tiny/small/base``):

====== ============== ==================== ========= ======== ========== ============ ==========
arch   depths         embed_dims           head_dim  mlp      topks      global heads  params*
====== ============== ==================== ========= ======== ========== ============ ==========
tiny   2, 2, 8, 2     64, 128, 256, 512    32        3        1,4,16,g   8            13.1 M
small  4, 4, 18, 4    64, 128, 256, 512    32        3        1,4,16,g   8            25.5 M
base   4, 4, 18, 4    96, 192, 384, 768    32        3        1,4,16,g   8            56.8 M
====== ============== ==================== ========= ======== ========== ============ ==========

\\* with the ImageNet head, as published. No layer scale, LCE kernel 5, qk_dim = dim; routing stages: dim / 32 heads,
scale dim^-0.5 (full channel dim); global stage (official ``AttentionLePE``): 8 heads, bias-free qkv, scale
(dim / 8)^-0.5, LCE on the attention input.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import MODELS, SparseBackbone, drop_path_schedule, resolve_arch
from .layers.biformer_blocks import GLOBAL, BiFormerBlock, LayerNorm2d, biformer_downsample, biformer_stem
from .layers.init import init_linear_and_norm

__all__ = ['BiFormer']

_COMMON = dict(head_dim=32, mlp_ratio=3, side_dwconv=5, global_heads=8, layer_scale_init_value=None)

ARCH_PRESETS = {
    'tiny': dict(depths=[2, 2, 8, 2], embed_dims=[64, 128, 256, 512], **_COMMON),
    'small': dict(depths=[4, 4, 18, 4], embed_dims=[64, 128, 256, 512], **_COMMON),
    'base': dict(depths=[4, 4, 18, 4], embed_dims=[96, 192, 384, 768], **_COMMON),
}

NUM_STAGES = 4


def _normalise_topks(topks: Sequence[int | str]) -> list[int | str]:
    """Validate ``topks`` (one per stage): positive ints, or ``'global'`` / the official ``-2`` for dense attention."""
    if isinstance(topks, (str, bytes)) or not isinstance(topks, Sequence) or len(topks) != NUM_STAGES:
        raise ValueError(f'topks must be a sequence of {NUM_STAGES} entries, got {topks!r}')
    out = []
    for topk in topks:
        if topk == GLOBAL or (isinstance(topk, int) and not isinstance(topk, bool) and topk == -2):
            out.append(GLOBAL)
        elif isinstance(topk, int) and not isinstance(topk, bool) and topk >= 1:
            out.append(topk)
        else:
            raise ValueError(f"topks entries must be ints >= 1 or 'global' (official -2), got {topk!r} in {topks!r}")
    return out


def _validate_arch(arch: dict) -> None:
    for key in ('depths', 'embed_dims'):
        value = arch[key]
        if not isinstance(value, Sequence) or len(value) != NUM_STAGES:
            raise ValueError(f'arch[{key!r}] must list {NUM_STAGES} ints, got {value!r}')
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in arch['embed_dims']):
        raise ValueError(f"arch['embed_dims'] must be positive ints, got {arch['embed_dims']!r}")
    for key in ('head_dim', 'global_heads'):
        if isinstance(arch[key], bool) or not isinstance(arch[key], int) or arch[key] < 1:
            raise ValueError(f'arch[{key!r}] must be a positive int, got {arch[key]!r}')
    for dim in arch['embed_dims']:
        if dim % arch['head_dim'] or dim % arch['global_heads'] or dim % 2:
            raise ValueError(f"every embed dim must be even and divisible by head_dim={arch['head_dim']} and "
                             f"global_heads={arch['global_heads']}; got embed_dims={arch['embed_dims']}")


@MODELS.register_module()
class BiFormer(SparseBackbone):
    """BiFormer for dense prediction: ``(B, in_channels, H, W) -> tuple of (B, C_i, H_i, W_i)`` for ``out_indices``.

    ``H_0 = ceil(ceil(H/2)/2)``, ``H_{i+1} = ceil(H_i/2)`` (stride 4, 8, 16, 32), ``C_i = embed_dims[i]``.

    Args:
        arch: ``'tiny' | 'small' | 'base'`` or a dict with ``depths``, ``embed_dims`` (optional ``head_dim`` 32,
            ``mlp_ratio`` 3, ``side_dwconv`` 5, ``global_heads`` 8, ``layer_scale_init_value`` None).
        n_win: regions per side of every routing stage. Default 16, the official COCO (mmdet) configs; the official
            ADE20K (mmseg, 512x512) configs use 8, ImageNet classification uses 7.
        topks: routed regions per stage; ints >= 1 or ``'global'`` (official ``-2``: dense attention with LCE).
            Default ``(1, 4, 16, 'global')``: the official T/S/B models, classification and dense alike.
        drop_path_rate: stochastic depth, linear over all blocks. Default 0.2 (official Mask R-CNN BiFormer-S;
            official: Mask R-CNN / RetinaNet B 0.3, UperNet S 0.3 / B 0.4, Semantic FPN S 0.15).
        norm_cfg: norm of the stem and downsamplers (official: BN; the official mmseg wrapper uses SyncBN).
        attn_backend: ``sparse_ops`` backend for the routing attention (``None`` = auto).
        in_channels, out_indices, frozen_stages, norm_eval, with_cp, cuda_graphs, init_cfg: see ``SparseBackbone``
            (stage i = its downsampler, its blocks and ``norm{i}``; the stem is ``downsample_layers.0``).
            The official mmdet wrapper defaults to ``norm_eval=True``.
    """

    def __init__(self, arch: str | dict = 'small', in_channels: int = 3,
                 out_indices: int | Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, drop_path_rate: float = 0.2, n_win: int = 16,
                 topks: Sequence[int | str] = (1, 4, 16, GLOBAL), norm_cfg: dict | None = None,
                 attn_backend: str | None = None, cuda_graphs: bool = True,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(num_stages=NUM_STAGES, in_channels=in_channels, out_indices=out_indices,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, with_cp=with_cp,
                         cuda_graphs=cuda_graphs, init_cfg=init_cfg)
        self.arch = resolve_arch(arch, ARCH_PRESETS, defaults=_COMMON)
        _validate_arch(self.arch)
        if isinstance(n_win, bool) or not isinstance(n_win, int) or n_win < 1:
            raise ValueError(f'n_win must be a positive int, got {n_win!r}')
        self.n_win = n_win
        self.topks = _normalise_topks(topks)
        norm_cfg = dict(type='BN') if norm_cfg is None else dict(norm_cfg)
        dims, depths = list(self.arch['embed_dims']), list(self.arch['depths'])
        self.embed_dims = dims
        self.num_features = tuple(dims)  # output channels per stage, as the other backbones
        dpr = drop_path_schedule(drop_path_rate, depths)

        self.downsample_layers = nn.ModuleList([biformer_stem(in_channels, dims[0], norm_cfg)])
        for i in range(1, NUM_STAGES):
            self.downsample_layers.append(biformer_downsample(dims[i - 1], dims[i], norm_cfg))
        self.stages = nn.ModuleList()
        for i in range(NUM_STAGES):
            self.stages.append(nn.Sequential(*[
                BiFormerBlock(dims[i], dims[i] // self.arch['head_dim'], n_win, self.topks[i],
                              mlp_ratio=self.arch['mlp_ratio'], drop_path=dpr[i][j],
                              layer_scale_init_value=self.arch['layer_scale_init_value'],
                              side_dwconv=self.arch['side_dwconv'], global_heads=self.arch['global_heads'],
                              backend=attn_backend)
                for j in range(depths[i])]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(dims[i]))
        self.apply(init_linear_and_norm)   # the official _init_weights
        self._freeze_stages()

    def _stem_modules(self) -> list[nn.Module]:
        return [self.downsample_layers[0]]

    def _stage_modules(self, i: int) -> list[nn.Module]:
        modules = [self.stages[i], getattr(self, f'norm{i}', None)]
        if i > 0:
            modules.append(self.downsample_layers[i])
        return [m for m in modules if m is not None]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: ``(B, in_channels, H, W)`` float, any H, W >= 1 -> tuple of ``(B, C_i, H_i, W_i)`` for out_indices."""
        outs = []
        for i in range(NUM_STAGES):
            x = self.downsample_layers[i](x)
            for block in self.stages[i]:
                x = self.checkpointed(block, x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
            if i == self.out_indices[-1]:
                break
        return tuple(outs)


