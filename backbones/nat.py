"""NAT: Neighborhood Attention Transformer (Hassani et al., CVPR 2023) as a dense-prediction backbone.

Skeleton (``NATSkeleton``, shared with DiNAT and HNT): ``ConvTokenizer`` (two 3x3/s2 convs + LayerNorm, stride 4),
four stages of ``NATBlock`` s, a ``ConvDownsampler`` (3x3/s2 conv + LayerNorm) closing every stage but the last,
a LayerNorm ``norm{i}`` on the output of each stage in ``out_indices`` (as the official detection / segmentation
backbones). NAT's attention is 2D neighbourhood attention, kernel 7, relative position bias ``(heads, 13, 13)`` per
block, through ``sparse_ops.neighborhood_attention_2d``. On the Triton path (CUDA) each block runs as one autograd
node with a hand-written backward (``layers/nat_fused.py``), and with ``cuda_graphs`` a training step whose input
size repeats is replayed as CUDA graphs (``graphs.py``); the twin path (CPU) is the module composition.

Layouts: ``forward(x: (B, in_channels, H, W))`` -> tuple of ``(B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2)))`` for
``i in out_indices`` (``C_i = embed_dims * 2^i``, strides 4/8/16/32); any ``H, W >= 1``. Inside, stages exchange
channels-last maps ``(B, H_i, W_i, C_i)``.

Presets (``NAT_ARCHS``), checked against SHI-Labs/Neighborhood-Attention-Transformer ``classification/nat.py``
(``nat_mini`` ... ``nat_base``) and its detection / segmentation configs:

====== ============ ===== ============== ===== =========== ==========================================
arch   depths       dim   heads          mlp   layer scale drop_path_rate (IN-1k / COCO MRCNN / ADE)
====== ============ ===== ============== ===== =========== ==========================================
mini   3, 4, 6, 5   64    2, 4, 8, 16    3     -           0.2 / 0.2 / 0.2
tiny   3, 4, 18, 5  64    2, 4, 8, 16    3     -           0.2 / 0.2 / 0.3
small  3, 4, 18, 5  96    3, 6, 12, 24   2     1e-5        0.3 / 0.35 / 0.5
base   3, 4, 18, 5  128   4, 8, 16, 32   2     1e-5        0.5 / - (Cascade 0.5) / 0.5
====== ============ ===== ============== ===== =========== ==========================================

``drop_path_rate=None`` takes the ImageNet value of the preset; configs set the task's value.
Official checkpoints load after ``backbones.converters.nat.convert`` (our parameter names are the official ones).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .base import MODELS, SparseBackbone, drop_path_schedule, resolve_arch
from .layers import ConvDownsampler, ConvTokenizer
from .layers.nat_blocks import NATBlock, NATStage, NeighborhoodAttention2d, init_nat_weights

__all__ = ['NAT', 'NATSkeleton', 'NAT_ARCHS', 'resolve_nat_arch']

NAT_ARCHS: dict[str, dict[str, Any]] = {
    'mini': dict(depths=(3, 4, 6, 5), embed_dims=64, num_heads=(2, 4, 8, 16), mlp_ratio=3.0, kernel_size=7,
                 layer_scale=None, drop_path_rate=0.2),
    'tiny': dict(depths=(3, 4, 18, 5), embed_dims=64, num_heads=(2, 4, 8, 16), mlp_ratio=3.0, kernel_size=7,
                 layer_scale=None, drop_path_rate=0.2),
    'small': dict(depths=(3, 4, 18, 5), embed_dims=96, num_heads=(3, 6, 12, 24), mlp_ratio=2.0, kernel_size=7,
                  layer_scale=1e-5, drop_path_rate=0.3),
    'base': dict(depths=(3, 4, 18, 5), embed_dims=128, num_heads=(4, 8, 16, 32), mlp_ratio=2.0, kernel_size=7,
                 layer_scale=1e-5, drop_path_rate=0.5),
}

# keys a dict ``arch`` may omit
ARCH_DEFAULTS: dict[str, Any] = dict(mlp_ratio=4.0, kernel_size=7, layer_scale=None, drop_path_rate=0.0)


def resolve_nat_arch(arch: str | Mapping[str, Any], presets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Preset name or dict -> validated arch dict (tuples for the per-stage lists, defaults filled in)."""
    arch = resolve_arch(arch, presets, defaults=ARCH_DEFAULTS)
    for key in ('depths', 'num_heads'):
        value = arch[key]
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 4:
            raise ValueError(f'arch[{key!r}] must be a sequence of 4 ints (one per stage), got {value!r}')
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise ValueError(f'arch[{key!r}] must hold positive ints, got {value!r}')
        arch[key] = tuple(value)
    dim = arch['embed_dims']
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"arch['embed_dims'] must be an even int >= 2 (the tokenizer halves it), got {dim!r}")
    return arch


def _validate_dilations(dilations: Sequence[Sequence[int]] | None, depths: Sequence[int]) -> tuple[tuple[int, ...]]:
    """Per-block dilations ``((d_0_0, ...), ..., (d_3_0, ...))``; None means 1 everywhere."""
    if dilations is None:
        return tuple((1,) * depth for depth in depths)
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence) or len(dilations) != len(depths):
        raise ValueError(f'dilations must hold one sequence per stage ({len(depths)}), got {dilations!r}')
    out = []
    for i, (stage, depth) in enumerate(zip(dilations, depths)):
        if isinstance(stage, (str, bytes)) or not isinstance(stage, Sequence) or len(stage) != depth:
            raise ValueError(f'dilations[{i}] must hold {depth} ints (one per block), got {stage!r}')
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in stage):
            raise ValueError(f'dilations[{i}] must hold positive ints, got {stage!r}')
        out.append(tuple(stage))
    return tuple(out)


class NATSkeleton(SparseBackbone):
    """The NAT / DiNAT / HNT skeleton; subclasses choose the attention (``_make_attention``) and how a stage runs
    its blocks (``_forward_blocks``).

    Args:
        arch: preset name of ``presets`` or a dict with ``depths``, ``embed_dims``, ``num_heads`` (optional:
            ``mlp_ratio`` 4.0, ``kernel_size`` 7, ``layer_scale`` None, ``drop_path_rate`` 0.0).
        presets: ``{name: arch dict}`` of the subclass.
        drop_path_rate: stochastic depth rate of the last block (linear from 0); None takes ``arch``'s.
        dilations: per-block dilations of the 2D attention, one sequence of ``depths[i]`` ints per stage;
            None is 1 everywhere (NAT).
        in_channels, out_indices, frozen_stages, norm_eval, with_cp, cuda_graphs, init_cfg: see ``SparseBackbone``.
    """

    def __init__(self, arch: str | Mapping[str, Any], presets: Mapping[str, Mapping[str, Any]], *,
                 in_channels: int = 3, out_indices: int | Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, drop_path_rate: float | None = None,
                 dilations: Sequence[Sequence[int]] | None = None, cuda_graphs: bool = True,
                 init_cfg: dict | list[dict] | None = None) -> None:
        arch_cfg = resolve_nat_arch(arch, presets)
        super().__init__(num_stages=4, in_channels=in_channels, out_indices=out_indices,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, with_cp=with_cp,
                         cuda_graphs=cuda_graphs, init_cfg=init_cfg)
        if drop_path_rate is None:
            drop_path_rate = arch_cfg['drop_path_rate']
        self.arch = arch_cfg
        self.drop_path_rate = float(drop_path_rate)
        depths, dim = arch_cfg['depths'], arch_cfg['embed_dims']
        self.dilations = _validate_dilations(dilations, depths)
        self.num_features = tuple(dim * 2 ** i for i in range(4))

        self.patch_embed = ConvTokenizer(in_channels, dim)
        rates = drop_path_schedule(self.drop_path_rate, depths)
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            stage_dim = self.num_features[i]
            blocks = [
                NATBlock(stage_dim, self._make_attention(i, j, stage_dim, arch_cfg['num_heads'][i]),
                         mlp_ratio=arch_cfg['mlp_ratio'], drop_path=rates[i][j], layer_scale=arch_cfg['layer_scale'])
                for j in range(depth)
            ]
            self.levels.append(NATStage(blocks, ConvDownsampler(stage_dim) if i < 3 else None))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))

        self.apply(init_nat_weights)
        self._freeze_stages()

    # -- structure -------------------------------------------------------------------------------------------------
    def _make_attention(self, stage: int, block: int, dim: int, num_heads: int) -> nn.Module:
        """Attention module of block ``block`` of stage ``stage``: ``(B, H, W, C) -> (B, H, W, C)``."""
        return NeighborhoodAttention2d(dim, num_heads, kernel_size=self.arch['kernel_size'],
                                       dilation=self.dilations[stage][block])

    def _stem_modules(self) -> list[nn.Module]:
        return [self.patch_embed]

    def _stage_modules(self, i: int) -> list[nn.Module]:
        return [self.levels[i], getattr(self, f'norm{i}', None)]

    # -- forward ---------------------------------------------------------------------------------------------------
    def _forward_blocks(self, stage: NATStage, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks of one stage on a channels-last map ``(B, H, W, C)``."""
        for block in stage.blocks:
            x = self.checkpointed(block, x)
        return x

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> tuple of NCHW maps, one per ``out_indices`` entry (strides 4..32)."""
        x = self.patch_embed(x)
        outs = []
        last = max(self.out_indices)
        for i, stage in enumerate(self.levels):
            x = self._forward_blocks(stage, x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous())
            if i == last:
                break
            x = stage.downsample(x)
        return tuple(outs)


@MODELS.register_module()
class NAT(NATSkeleton):
    """Neighborhood Attention Transformer backbone (2D NA, kernel 7, relative position bias).

    Args:
        arch: ``'mini' | 'tiny' | 'small' | 'base'`` (``NAT_ARCHS``) or a dict (see ``NATSkeleton``).
        in_channels: image channels.
        out_indices: stages to return (0..3).
        frozen_stages: -1 none; k >= 0 freezes the tokenizer and stages 0..k-1.
        norm_eval: keep BatchNorms in eval mode (NAT has none; accepted for API uniformity).
        with_cp: activation checkpointing per block.
        drop_path_rate: stochastic depth of the last block; None takes the preset's ImageNet value.
        cuda_graphs: see ``SparseBackbone``.
        init_cfg: MMEngine init config (e.g. a converted official checkpoint).

    ``forward``: ``(B, in_channels, H, W)`` -> tuple of ``(B, 64·2^i, ceil(H/2^(i+2)), ceil(W/2^(i+2)))`` (NAT-T).
    """

    def __init__(self, arch: str | Mapping[str, Any] = 'tiny', in_channels: int = 3,
                 out_indices: int | Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, drop_path_rate: float | None = None, cuda_graphs: bool = True,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(arch, NAT_ARCHS, in_channels=in_channels, out_indices=out_indices,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, with_cp=with_cp,
                         drop_path_rate=drop_path_rate, cuda_graphs=cuda_graphs, init_cfg=init_cfg)
