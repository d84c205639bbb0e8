"""Official NAT checkpoints (SHI-Labs/Neighborhood-Attention-Transformer) -> ``backbones.nat.NAT``.

Our parameter names are the official ones, so most keys pass unchanged. Official layout (``classification/nat.py``
ImageNet models; ``detection/nat.py`` / ``segmentation/nat.py`` backbones under ``backbone.`` in mmdet/mmseg
checkpoints) and what happens to each key:

==================================================================  ==================================================
official key (shape)                                                here
==================================================================  ==================================================
``patch_embed.proj.{0,1}.{weight,bias}``, ``patch_embed.norm.*``    same
``levels.{i}.blocks.{j}.{norm1,norm2}.*``                           same
``levels.{i}.blocks.{j}.attn.qkv.*`` (3C, C), ``attn.proj.*``       same
``levels.{i}.blocks.{j}.attn.rpb`` (heads, 2k-1, 2k-1)              same (resized bicubically when ``kernel_size``
                                                                    asks for another k; ``load_converted`` also
                                                                    resizes to the module's grid)
``levels.{i}.blocks.{j}.mlp.{fc1,fc2}.*``                           same
``levels.{i}.blocks.{j}.{gamma1,gamma2}`` (C,) (layer scale)        same
``levels.{i}.downsample.reduction.weight`` (2C, C, 3, 3), ``.norm``  same
``norm{i}.*`` (detection / segmentation output norms)               same
``norm.*`` (classifier's final norm, C_3)                           ``norm3.*`` (the output norm of the last stage
                                                                    sees the same features; the official detection
                                                                    code started it fresh)
``head.*`` (classifier)                                             dropped
anything else                                                       passed through, reported; ``load_converted``
                                                                    then lists it as unexpected
==================================================================  ==================================================

DiNAT (``converters/dinat.py``) and HNT (``converters/hnt.py``) checkpoints use the same names and call
``convert_nat_family``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

from .common import resize_rpb, strip_prefixes

__all__ = ['convert', 'convert_nat_family', 'NAT_KEY', 'EXPECTED_MISSING']

# documented differences: the output norms of the stages (``norm{i}``) that an ImageNet classifier checkpoint
# does not have (its one final norm becomes the last stage's); ``ConvertedPretrained`` logs them as info
EXPECTED_MISSING = (r'^norm\d+\.(weight|bias)$',)

# every key the NAT family's official models can have (classifier and detection variants)
NAT_KEY = re.compile(
    r'^(patch_embed\.(proj\.[01]\.(weight|bias)|norm\.(weight|bias))'
    r'|levels\.\d+\.blocks\.\d+\.((norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)'
    r'|attn\.rpb|gamma1|gamma2)'
    r'|levels\.\d+\.downsample\.(reduction\.weight|norm\.(weight|bias))'
    r'|norm\d*\.(weight|bias)|head\.(weight|bias))$')
_RPB = re.compile(r'^levels\.\d+\.blocks\.\d+\.attn\.rpb$')


def _resize_rpb_1d(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a 1D bias table ``(heads, 2K-1)`` to ``(heads, length)`` (``align_corners`` keeps the centre
    and both ends on grid points)."""
    resized = F.interpolate(table.detach().float().unsqueeze(0), size=length, mode='linear', align_corners=True)
    return resized.squeeze(0).to(table.dtype)


def convert_nat_family(state_dict: Mapping[str, torch.Tensor], fmt: str, rpb_ndim: int,
                       kernel_size: int | None = None, num_stages: int = 4) -> dict[str, torch.Tensor]:
    """Map an official NAT / DiNAT / HNT state dict to our names (see the module docstring).

    Args:
        state_dict: official tensors; wrapper prefixes (``module.``, ``model.``, ``backbone.``) are stripped.
        fmt: format name for messages.
        rpb_ndim: 3 for 2D tables ``(heads, 2k-1, 2k-1)`` (NAT, DiNAT), 2 for 1D tables ``(heads, 2K-1)`` (HNT).
        kernel_size: resize every ``rpb`` to ``2 * kernel_size - 1`` offsets per axis; None keeps them.
        num_stages: stages of the model (the final ``norm`` becomes ``norm{num_stages - 1}``).

    Returns:
        A new dict in our names. Raises ValueError when no key looks like the NAT family (wrong format).
    """
    if kernel_size is not None and (isinstance(kernel_size, bool) or not isinstance(kernel_size, int)
                                    or kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f'kernel_size must be an odd positive int or None, got {kernel_size!r}')
    state_dict = strip_prefixes(state_dict)
    if not any(key.startswith('levels.') for key in state_dict):
        raise ValueError(f'not a {fmt} checkpoint: no levels.* keys (e.g. {sorted(state_dict)[:5]})')
    out, dropped, renamed, unknown, resized = {}, [], [], [], []
    for key, value in state_dict.items():
        if not NAT_KEY.match(key):
            unknown.append(key)
            out[key] = value
        elif key.startswith('head.'):
            dropped.append(key)
        elif key.startswith('norm.'):
            new_key = f'norm{num_stages - 1}.' + key[len('norm.'):]
            renamed.append(f'{key} -> {new_key}')
            out[new_key] = value
        elif _RPB.match(key):
            if value.ndim != rpb_ndim:
                raise ValueError(f'{fmt}: {key} has shape {tuple(value.shape)}; expected a {rpb_ndim}D table')
            if kernel_size is not None and value.shape[-1] != 2 * kernel_size - 1:
                target = 2 * kernel_size - 1
                new = resize_rpb(value, target) if rpb_ndim == 3 else _resize_rpb_1d(value, target)
                resized.append(f'{key} {tuple(value.shape)} -> {tuple(new.shape)}')
                value = new
            out[key] = value
        else:
            out[key] = value
    if dropped:
        print_log(f'{fmt} converter: dropped classifier keys {dropped}', logger='current')
    for line in renamed:
        print_log(f'{fmt} converter: renamed {line}', logger='current')
    for line in resized:
        print_log(f'{fmt} converter: resized bias table {line} (asked: kernel_size)', logger='current')
    for key in unknown:
        print_log(f'{fmt} converter: unrecognised key passed through: {key}', logger='current',
                  level=logging.WARNING)
    return out


def convert(state_dict: Mapping[str, torch.Tensor], kernel_size: int | None = None) -> dict[str, torch.Tensor]:
    """Official NAT state dict -> ``NAT`` names; ``kernel_size`` optionally resizes the ``rpb`` tables."""
    return convert_nat_family(state_dict, 'nat', rpb_ndim=3, kernel_size=kernel_size)
