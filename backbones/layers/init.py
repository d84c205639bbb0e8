"""``init_linear_and_norm``: the initialisation every source work gives its Linear and LayerNorm layers.

Swin / HWT, NAT / DiNAT and BiFormer initialise the same way: ``nn.Linear`` weights trunc-normal(std 0.02) with zero
bias, ``nn.LayerNorm`` weight 1 and bias 0; convs keep PyTorch's default. Each backbone adds its position-bias tables.
The truncated normal is MMEngine's ``trunc_normal_``, timm's inverse-CDF sampler that the official code calls (the same
draws on every PyTorch version; ``nn.init.trunc_normal_`` of PyTorch 2.13 samples by rejection instead).
"""
from __future__ import annotations

from mmengine.model.weight_init import trunc_normal_
from torch import nn

__all__ = ['init_linear_and_norm', 'trunc_normal_']


def init_linear_and_norm(module: nn.Module) -> None:
    """Initialise one module in place when it is an ``nn.Linear`` or ``nn.LayerNorm`` (use with ``model.apply``)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
