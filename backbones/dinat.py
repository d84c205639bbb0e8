"""DiNAT: Dilated Neighborhood Attention Transformer (Hassani & Shi, 2022) as a dense-prediction backbone.

The NAT skeleton (``backbones/nat.py``) with blocks alternating NA (dilation 1) and DiNA (dilation > 1). The
dilation of every block is a constructor argument: a named schedule (``DILATION_SCHEDULES``) or explicit per-block
lists. A named schedule is a per-stage pattern repeated over the stage's blocks; it reproduces the official lists
(SHI-Labs/Neighborhood-Attention-Transformer ``classification/dinat.py``, ``detection/configs/dinat/*``,
``segmentation/configs/dinat/*``) for every depth of the mini..base presets, e.g. COCO with NAT-T depths::

    [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]]

- ``'imagenet'``: the 224 px ImageNet-1k pretraining schedule (8 / 4 / 2 / 1).
- ``'coco'``: Mask R-CNN / Cascade Mask R-CNN, COCO (28 / 7-14 / 3-5-7 / 3).
- ``'ade20k'``: UPerNet 512 x 512, ADE20K (16 / 4-8 / 2-3-4 / 2).

Every dilation is clipped on the fly to ``max(1, min(d, min(H, W) // kernel_size))`` of the map it runs on
(``layers.nat_blocks.clip_dilation``). Wherever ``kernel * dilation <= min(H, W)`` (every map the official models
ran on) the result is NATTEN's. Below that the three differ: NATTEN <= 0.15 (whose ``NeighborhoodAttention2D``
the official models use) zero-pads the map up to ``kernel * dilation`` and attends the padded tokens too; NATTEN
>= 0.17 refuses such inputs; here only real tokens are attended (a sub-grid side shorter than the kernel is
covered whole) and the dilation is clipped, so any ``H, W >= 1`` works (DiNAT's detection configs fail below a
784 px side with NATTEN >= 0.17).

Presets (``DINAT_ARCHS``): as NAT (``NAT_ARCHS``) except that DiNAT-S has no layer scale (``dinat_small`` and its
configs pass none; DiNAT-B uses 1e-5). drop_path_rate IN-1k / COCO Mask R-CNN / ADE UPerNet: mini 0.2/0.2/0.2,
tiny 0.2/0.2/0.3, small 0.3/0.35/0.5, base 0.5/(Cascade 0.6)/0.5.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import MODELS
from .nat import NAT_ARCHS, NATSkeleton, resolve_nat_arch

__all__ = ['DiNAT', 'DINAT_ARCHS', 'DILATION_SCHEDULES', 'dilation_schedule']

DINAT_ARCHS: dict[str, dict[str, Any]] = {
    'mini': dict(NAT_ARCHS['mini']),
    'tiny': dict(NAT_ARCHS['tiny']),
    'small': dict(NAT_ARCHS['small'], layer_scale=None),
    'base': dict(NAT_ARCHS['base']),
}

# per stage, the dilation pattern that repeats over the stage's blocks
DILATION_SCHEDULES: dict[str, tuple[tuple[int, ...], ...]] = {
    'imagenet': ((1, 8), (1, 4), (1, 2), (1, 1)),
    'coco': ((1, 28), (1, 7, 1, 14), (1, 3, 1, 5, 1, 7), (1, 3)),
    'ade20k': ((1, 16), (1, 4, 1, 8), (1, 2, 1, 3, 1, 4), (1, 2)),
}


def dilation_schedule(name: str, depths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Per-block dilations of the named schedule for ``depths``: stage ``i`` repeats ``DILATION_SCHEDULES[name][i]``
    and is cut to ``depths[i]`` blocks."""
    if name not in DILATION_SCHEDULES:
        raise KeyError(f'unknown dilation schedule {name!r}; valid: {sorted(DILATION_SCHEDULES)} '
                       f'(or pass per-block lists)')
    return tuple(tuple(pattern[j % len(pattern)] for j in range(depth))
                 for pattern, depth in zip(DILATION_SCHEDULES[name], depths))


@MODELS.register_module()
class DiNAT(NATSkeleton):
    """Dilated Neighborhood Attention Transformer backbone.

    Args:
        arch: ``'mini' | 'tiny' | 'small' | 'base'`` (``DINAT_ARCHS``) or a dict (see ``NATSkeleton``).
        dilations: ``'imagenet' | 'coco' | 'ade20k'`` (``DILATION_SCHEDULES``) or explicit per-block lists, one
            list of ``depths[i]`` ints per stage (the official configs' ``dilations`` argument).
        in_channels, out_indices, frozen_stages, norm_eval, with_cp, drop_path_rate, cuda_graphs, init_cfg: as
            ``NAT``.

    ``forward``: ``(B, in_channels, H, W)`` -> tuple of NCHW maps ``(B, C_i, ceil(H/2^(i+2)), ceil(W/2^(i+2)))``.
    """

    def __init__(self, arch: str | Mapping[str, Any] = 'tiny', dilations: str | Sequence[Sequence[int]] = 'imagenet',
                 in_channels: int = 3, out_indices: int | Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, drop_path_rate: float | None = None,
                 cuda_graphs: bool = True, init_cfg: dict | list[dict] | None = None) -> None:
        if isinstance(dilations, str):
            dilations = dilation_schedule(dilations, resolve_nat_arch(arch, DINAT_ARCHS)['depths'])
        super().__init__(arch, DINAT_ARCHS, in_channels=in_channels, out_indices=out_indices,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, with_cp=with_cp,
                         drop_path_rate=drop_path_rate, dilations=dilations, cuda_graphs=cuda_graphs,
                         init_cfg=init_cfg)
