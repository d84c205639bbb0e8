"""``init_linear_and_norm``: the initialisation every source work gives its Linear and LayerNorm layers.

Swin / HWT, NAT / DiNAT and BiFormer initialise the same way: ``nn.Linear`` weights trunc-normal(std 0.02, cut at
+-2) with zero bias, ``nn.LayerNorm`` weight 1 and bias 0; convs keep PyTorch's default. Each backbone adds its
position-bias tables. The truncated normal is PyTorch's ``nn.init.trunc_normal_``: since PyTorch 2.12 it resamples
out-of-range draws, where the inverse-CDF sampler of timm (what the official code calls) and of older PyTorch puts
the rare weight at the +-2 cut, 100 standard deviations out (7 of 2**27 draws at std 0.02 with MMEngine's copy of
it on PyTorch 2.13; pytorch/pytorch#174997).
"""
from __future__ import annotations

from torch import nn

__all__ = ['init_linear_and_norm']


def init_linear_and_norm(module: nn.Module) -> None:
    """Initialise one module in place when it is an ``nn.Linear`` or ``nn.LayerNorm`` (use with ``model.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
