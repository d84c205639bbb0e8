"""Official HNT checkpoints (Yunge6666/Hilbert-Local-Attention ``hnt.py``) -> ``backbones.hnt.HNT``.

The official HNT is the NAT classification model with NATTEN 0.14.4's ``NeighborhoodAttention1D`` in every block,
so its keys are NAT's (see ``converters/nat.py``): ``patch_embed.*``, ``levels.{i}.blocks.{j}.{norm1, attn.qkv,
attn.rpb, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``levels.{i}.downsample.*``, ``norm.*``, ``head.*``. The one
difference is ``attn.rpb``: a 1D table ``(heads, 2K-1)`` (``(heads, 97)`` for K = 49) indexed by the sequence offset
``key - query``, which ``HilbertNeighborhoodAttention1d`` keeps as is. ``head.*`` is dropped, ``norm.*`` becomes
``norm3.*``; ``kernel_size`` optionally resizes the 1D tables linearly. A checkpoint of another kernel than the
model's (the official ``nat1D_tiny`` passes kernel 7: tables ``(heads, 13)``) is an error in
``ConvertedPretrained`` / ``tools/convert_checkpoint.py --arch`` unless resizing is asked for
(``resize_bias_tables=True`` / ``--resize-bias-tables``) or the arch takes the checkpoint's kernel. Checkpoints
saved with NATTEN >= 0.17 have no ``rpb`` (its ``rel_pos_bias`` defaults to False there); ``load_converted`` then
reports those keys as missing (an error unless ``strict=False``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .nat import EXPECTED_MISSING, convert_nat_family

__all__ = ['convert', 'EXPECTED_MISSING']


def convert(state_dict: Mapping[str, torch.Tensor], kernel_size: int | None = None) -> dict[str, torch.Tensor]:
    """Official HNT state dict -> ``HNT`` names; ``kernel_size`` optionally resizes the 1D ``rpb`` tables."""
    return convert_nat_family(state_dict, 'hnt', rpb_ndim=2, kernel_size=kernel_size)
