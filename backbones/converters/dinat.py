"""Official DiNAT checkpoints (SHI-Labs/Neighborhood-Attention-Transformer) -> ``backbones.dinat.DiNAT``.

The official ``DiNAT`` is ``NAT`` with per-block dilations (``class DiNAT(NAT): pass``); dilations are constructor
arguments, not parameters, so the checkpoint keys and shapes are exactly NAT's: see ``converters/nat.py`` for the
key table (classifier ``head.*`` dropped, final ``norm.*`` -> ``norm3.*``, ``attn.rpb (heads, 2k-1, 2k-1)`` kept).
The ``*_11x11interp`` checkpoints carry 21 x 21 tables; they load into a kernel-11 arch as they are, or into a
kernel-7 one after resizing (``kernel_size=7`` here, or ``load_converted``'s automatic resize).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .nat import EXPECTED_MISSING, convert_nat_family

__all__ = ['convert', 'EXPECTED_MISSING']


def convert(state_dict: Mapping[str, torch.Tensor], kernel_size: int | None = None) -> dict[str, torch.Tensor]:
    """Official DiNAT state dict -> ``DiNAT`` names; ``kernel_size`` optionally resizes the ``rpb`` tables."""
    return convert_nat_family(state_dict, 'dinat', rpb_ndim=3, kernel_size=kernel_size)
