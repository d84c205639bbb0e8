"""Official Hilbert-Local-Attention HWT checkpoints -> ``backbones.hwt.HWT`` parameter names.

Official layout (``hwt.py`` of Yunge6666/Hilbert-Local-Attention, a Swin fork) and what happens to each key:

- ``patch_embed.{proj,norm}.*``, ``layers.{i}.blocks.{j}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}.*``,
  ``layers.{i}.downsample.{reduction,norm}.*``: same names and shapes here.
- ``layers.{i}.blocks.{j}.attn.relative_position_bias_table``: official ``((2H-1)*(2W-1), heads)`` for the fixed
  stage resolution H x W (square: the official models take an ``img_size`` int), indexed by ``query - key``
  offsets. Ours: ``(heads, 2ws-1, 2ws-1)`` indexed by clamped ``key - query`` offsets. The converter keeps the
  official values of the offsets ``|dy|, |dx| <= ws-1`` (centre crop, axes flipped for the sign convention); when
  the official grid is smaller than ours (stage smaller than the window) it extends it by repeating the border,
  which is what clamping does for the offsets that never occurred.
- ``norm.*`` (final norm after the last stage) -> ``norm{last}.*`` (output norm of the last stage).
- dropped: ``head.*`` (classifier), ``layers.{i}.blocks.{j}.attn_mask`` and ``relative_position_index`` (buffers
  that depend on the training resolution).
- anything else passes through unchanged, so ``load_converted`` reports it as unexpected.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

__all__ = ['convert', 'convert_rpb_table']

_DROP = re.compile(r'^(head\.|.*\.attn_mask$|.*relative_position_index$)')
_RPB = re.compile(r'^layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$')
_LAYER = re.compile(r'^layers\.(\d+)\.')


def convert_rpb_table(table: torch.Tensor, window_size: int = 7) -> torch.Tensor:
    """Official ``((2H-1)*(2W-1), heads)`` table (square grid) -> ours ``(heads, 2ws-1, 2ws-1)``.

    ``out[h, dy + ws-1, dx + ws-1]`` (offset ``key - query``) equals the official entry of offset
    ``query - key = (-dy, -dx)`` for ``|dy|, |dx| <= min(ws, H) - 1``; beyond the official grid the border repeats.
    """
    if table.ndim != 2:
        raise ValueError(f'official HWT bias table must be 2D ((2H-1)*(2W-1), heads), got {tuple(table.shape)}')
    rows, heads = table.shape
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise ValueError(f'official HWT bias table has {rows} rows, not (2H-1)^2 for a square stage; '
                         f'non-square training resolutions are not supported')
    grid = table.t().reshape(heads, side, side)  # [h, (q-k)_y + H-1, (q-k)_x + W-1]
    grid = grid.flip(1, 2)  # now indexed by key - query
    target = 2 * window_size - 1
    if side > target:
        start = (side - target) // 2
        grid = grid[:, start:start + target, start:start + target]
    elif side < target:
        pad = (target - side) // 2
        grid = F.pad(grid.unsqueeze(0).float(), (pad, pad, pad, pad), mode='replicate').squeeze(0).to(table.dtype)
    return grid.contiguous()


def convert(state_dict: dict[str, torch.Tensor], window_size: int = 7) -> dict[str, torch.Tensor]:
    """Map an official HWT state dict (already unwrapped, prefixes stripped) to ``HWT``'s names and shapes.

    ``window_size``: the HWT window size the target model uses (7 for every official model).
    """
    if not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f'window_size must be a positive int, got {window_size!r}')
    stages = {int(m.group(1)) for k in state_dict if (m := _LAYER.match(k))}
    out = {}
    for key, value in state_dict.items():
        if _DROP.match(key):
            continue
        if _RPB.match(key):
            out[key] = convert_rpb_table(value, window_size)
        elif key.startswith('norm.'):
            if not stages:
                raise ValueError('official HWT checkpoint has a final norm but no layers.*; not an HWT checkpoint?')
            out[f'norm{max(stages)}.' + key[len('norm.'):]] = value
        else:
            out[key] = value
    return out
