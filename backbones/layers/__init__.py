"""Shared building blocks of the backbones (one concept per module).

Layouts: NCHW ``(B, C, H, W)``; channels-last ``(B, H, W, C)`` between stems / downsamplers; tokens ``(B, N, C)``.

- ``tokens``: ``nchw_to_nhwc``, ``nhwc_to_nchw``, ``to_hilbert``, ``from_hilbert``
- ``patch_embed``: ``PatchEmbed`` (Swin 4x4 conv), ``ConvTokenizer`` (NAT two 3x3/s2 convs)
- ``downsample``: ``PatchMerging`` (Swin 2x2 concat + norm + linear), ``ConvDownsampler`` (NAT 3x3/s2 conv + norm)
- ``mlp``: ``Mlp`` (fc1 / act / fc2)
- ``norm``: ``PreNorm`` (``nn.LayerNorm`` before a Linear; under CUDA autocast one Triton kernel, autocast dtype out)
- ``linear``: ``Linear`` / ``Conv2d`` (``nn.Linear`` / ``nn.Conv2d`` whose autocast weight casts
  ``cast_linear_weights`` batches per forward)
- ``init``: ``init_linear_and_norm`` (the source works' Linear / LayerNorm initialisation)
- ``drop_path``: ``ResidualDropPath`` (``x + drop_path(gamma * y)`` in one fused ``addcmul``; what the blocks use)

Architecture-family blocks live beside them and are imported from their modules directly:
``nat_blocks`` (NAT / DiNAT / HNT attention, block, stage) and ``biformer_blocks`` (BiFormer stem, block, BRA).
The blocks' math, written once for every path: ``block_math``. Blocks as one autograd node on the Triton path:
``biformer_fused`` (routing block), ``hwt_fused`` (HWT block), ``nat_fused`` (NAT / DiNAT block), with the kernels
and backward of the last two in ``attn_block_fused`` and what all share in ``fused_block``. CUDA-graph replay of
whole training steps: ``backbones/graphs.py``.
"""
from .drop_path import ResidualDropPath
from .downsample import ConvDownsampler, PatchMerging
from .linear import Conv2d, Linear, cast_linear_weights
from .mlp import Mlp
from .norm import PreNorm
from .patch_embed import ConvTokenizer, PatchEmbed
from .tokens import from_hilbert, nchw_to_nhwc, nhwc_to_nchw, to_hilbert

__all__ = ['ResidualDropPath', 'Linear', 'Conv2d', 'cast_linear_weights', 'Mlp', 'PreNorm', 'PatchEmbed',
           'ConvTokenizer', 'PatchMerging', 'ConvDownsampler', 'nchw_to_nhwc', 'nhwc_to_nchw', 'to_hilbert',
           'from_hilbert']
