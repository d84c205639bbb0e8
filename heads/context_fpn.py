"""SparseContextFPN: mmdet's FPN plus sparse-attention context on its high-resolution outputs (EXPERIMENTAL).

Measured (docs/benchmarks.md, "Heads"): on the embedded dataset its mAP is within seed noise of the stock FPN,
for more training and inference time at 1024². It is kept for trials on real high-resolution data;
no default config uses it. ``SparseContextUPerHead`` (the same context block in UperNet) does earn its place.

A stock FPN mixes information only through 3x3 convs and the top-down path, so a stride-4 / stride-8 feature sees a
small neighbourhood plus coarse semantics. This neck adds, on the chosen output levels (default P2 and P3, strides
4 and 8 with a 4-level backbone), a `SparseContext` block (bi-level routing attention by default: every pixel reads
the top-k most related regions of the whole map; or shifted Hilbert-window attention), at a cost linear in pixels.
Everything else (laterals, top-down, extra levels) is the stock FPN.

    inputs: tuple of (B, in_channels[i], H_i, W_i)   ->   tuple of num_outs maps (B, out_channels, H_l, W_l)
"""
from __future__ import annotations

from typing import Optional, Sequence

from mmdet.models.necks import FPN
from mmengine.registry import MODELS
from torch import Tensor, nn

from .context_block import SparseContext


@MODELS.register_module()
class SparseContextFPN(FPN):
    """FPN whose outputs at `context_levels` pass through a SparseContext block.

    Args:
        context_levels: indices into the output tuple (0 = the finest level) that get context.
        context_cfg: keyword arguments of SparseContext / SparseContextAttention
            (mode, num_blocks, embed_dims, head_dim, region_size | n_win, topk, window, layer_scale, backend).
        *args, **kwargs: mmdet FPN's arguments (in_channels, out_channels, num_outs, start_level, ...).
    """

    def __init__(self, *args, context_levels: Sequence[int] = (0, 1), context_cfg: Optional[dict] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        levels = sorted(set(int(i) for i in context_levels))
        if not levels or levels[0] < 0 or levels[-1] >= self.num_outs:
            raise ValueError(f'context_levels must be in [0, {self.num_outs}), got {tuple(context_levels)}')
        self.context_levels = tuple(levels)
        cfg = dict(context_cfg or {})
        self.context = nn.ModuleList([SparseContext(self.out_channels, **cfg) for _ in levels])

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """inputs: backbone maps (B, C_i, H_i, W_i) -> FPN maps (B, out_channels, H_l, W_l), context added."""
        outs = list(super().forward(inputs))
        for level, block in zip(self.context_levels, self.context):
            outs[level] = block(outs[level])
        return tuple(outs)
