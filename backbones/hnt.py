"""HNT: Hilbert Neighborhood Transformer (Hilbert-guided local attention paper, arXiv 2511.05832) as a backbone.

The NAT skeleton (``backbones/nat.py``: conv tokenizer, conv downsamplers, four stages, ``norm{i}`` output norms)
whose blocks run 1D neighbourhood attention (kernel 49, clamped centre, every token sees ``min(49, N)`` tokens) on
the stage's tokens laid out along the generalized Hilbert curve (``sparse_ops.hilbert_order``). Tokens are put in
Hilbert order once when a stage starts and back in row-major order once when it ends (the convs of the downsampler
and the output NCHW maps need the 2D layout); every block in between works on the sequence ``(B, N, C)``.

Position bias: the official ``hnt.py`` (Yunge6666/Hilbert-Local-Attention) builds its blocks from NATTEN 0.14.4's
``NeighborhoodAttention1D``, which always has ``rpb (heads, 2K-1)`` = ``(heads, 97)`` indexed by the sequence
offset ``key - query``; we keep that parameter (``layers.nat_blocks.HilbertNeighborhoodAttention1d``), so the
official keys load one to one. It depends on sequence offsets only, so it is independent of the input size.

Presets (``HNT_ARCHS``), the NAT-Mini / NAT-Tiny layouts with kernel 49 (paper: HNT-mini 81.6, HNT-tiny 82.5):

===== ============ ==== ============ ==== ====== ===============
arch  depths       dim  heads        mlp  kernel drop_path_rate
===== ============ ==== ============ ==== ====== ===============
mini  3, 4, 6, 5   64   2, 4, 8, 16  3    49     0.2
tiny  3, 4, 18, 5  64   2, 4, 8, 16  3    49     0.2
===== ============ ==== ============ ==== ====== ===============

The official registered ``nat1D_mini`` uses kernel 49 but row-major order by default, and ``nat1D_tiny`` passes
kernel 7 (a leftover of the NAT file it was forked from); we follow the paper (Hilbert order, K = 49, both sizes).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .base import MODELS
from .layers import from_hilbert, to_hilbert
from .layers.nat_blocks import HilbertNeighborhoodAttention1d, NATStage
from .nat import NAT_ARCHS, NATSkeleton

__all__ = ['HNT', 'HNT_ARCHS']

HNT_ARCHS: dict[str, dict[str, Any]] = {
    'mini': dict(NAT_ARCHS['mini'], kernel_size=49),
    'tiny': dict(NAT_ARCHS['tiny'], kernel_size=49),
}


@MODELS.register_module()
class HNT(NATSkeleton):
    """Hilbert Neighborhood Transformer backbone (1D NA, kernel 49, on the Hilbert sequence of each stage).

    Args:
        arch: ``'mini' | 'tiny'`` (``HNT_ARCHS``) or a dict (see ``NATSkeleton``; ``kernel_size`` is the 1D window).
        in_channels, out_indices, frozen_stages, norm_eval, with_cp, drop_path_rate, cuda_graphs, init_cfg: as ``NAT``.

    ``forward``: ``(B, in_channels, H, W)`` -> tuple of NCHW maps ``(B, C_i, ceil(H/2^(i+2)), ceil(W/2^(i+2)))``.
    """

    def __init__(self, arch: str | Mapping[str, Any] = 'tiny', in_channels: int = 3,
                 out_indices: int | Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, drop_path_rate: float | None = None, cuda_graphs: bool = True,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(arch, HNT_ARCHS, in_channels=in_channels, out_indices=out_indices,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, with_cp=with_cp,
                         drop_path_rate=drop_path_rate, cuda_graphs=cuda_graphs, init_cfg=init_cfg)

    def _make_attention(self, stage: int, block: int, dim: int, num_heads: int) -> nn.Module:
        """1D NA on the Hilbert sequence: ``(B, N, C), hw -> (B, N, C)``."""
        return HilbertNeighborhoodAttention1d(dim, num_heads, kernel_size=self.arch['kernel_size'])

    def _forward_blocks(self, stage: NATStage, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> Hilbert sequence ``(B, H*W, C)`` -> blocks -> ``(B, H, W, C)`` (one reorder each way)."""
        hw = (x.shape[1], x.shape[2])
        tokens = to_hilbert(x, channels_last=True)
        for block in stage.blocks:
            tokens = self.checkpointed(block, tokens, hw)
        return from_hilbert(tokens, hw, channels_last=True)
