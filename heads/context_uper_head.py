"""SparseContextUPerHead: mmseg's UPerHead plus sparse-attention context on its fused stride-4 feature.

UPerHead's global context comes only from the pyramid pooling module on the stride-32 map; the stride-4 fused map
that the classifier reads is mixed by 3x3 convs. This head adds one `SparseContext` block (bi-level routing attention
by default) on that fused map, right before the classifier, so every pixel can read related regions anywhere in the
image at full head resolution, at a cost linear in pixels. The rest is the stock UPerHead.

    inputs: list of (B, in_channels[i], H_i, W_i)   ->   logits (B, num_classes, H_0, W_0)
"""
from __future__ import annotations

from typing import Optional

from mmengine.registry import MODELS
from mmseg.models.decode_heads import UPerHead
from torch import Tensor

from .context_block import SparseContext


@MODELS.register_module()
class SparseContextUPerHead(UPerHead):
    """UPerHead with a SparseContext block on the fused (B, channels, H_0, W_0) feature.

    Args:
        context_cfg: keyword arguments of SparseContext / SparseContextAttention
            (mode, num_blocks, embed_dims, head_dim, region_size | n_win, topk, window, layer_scale, backend).
        **kwargs: mmseg UPerHead's arguments (in_channels, channels, pool_scales, num_classes, ...).
    """

    def __init__(self, context_cfg: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)
        self.context = SparseContext(self.channels, **dict(context_cfg or {}))

    def _forward_feature(self, inputs: list[Tensor]) -> Tensor:
        """inputs: backbone maps -> fused feature (B, channels, H_0, W_0) with sparse context."""
        return self.context(super()._forward_feature(inputs))
