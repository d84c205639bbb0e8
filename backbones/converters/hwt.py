"""Official Hilbert-Local-Attention HWT checkpoints -> ``backbones.hwt.HWT`` parameter names.

Official layout (``hwt.py`` of Yunge6666/Hilbert-Local-Attention, a Swin fork) and what happens to each key:

- ``patch_embed.{proj,norm}.*``, ``layers.{i}.blocks.{j}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}.*``,
  ``layers.{i}.downsample.{reduction,norm}.*``: same names and shapes here.
- ``layers.{i}.blocks.{j}.attn.relative_position_bias_table``: official ``((2H-1)*(2W-1), heads)`` for the fixed
  stage resolution H x W (square: the official models take an ``img_size`` int), indexed by ``query - key``
  offsets. Ours: ``(heads, 2R+1, 2R+1)`` indexed by ``key - query`` offsets, ``R = backbones.hwt.bias_radius(ws)``
  (every offset that can occur inside a window). The converter copies the official entry of every offset both
  tables hold (``|dy|, |dx| <= min(R, H-1)``; axes flipped for the sign convention) and fills the offsets the
  official table lacks (``|dy|`` or ``|dx| > H-1``: they cannot occur at the training resolution, e.g. beyond
  +-6 at the 7 x 7 last stage of a 224 px model) from the nearest official entry, and logs which tables it
  filled (info: an expected difference).
- ``norm.*`` (final norm after the last stage) -> ``norm{last}.*`` (output norm of the last stage).
- dropped: ``head.*`` (classifier), ``layers.{i}.blocks.{j}.attn_mask`` and ``relative_position_index`` (buffers
  that depend on the training resolution).
- anything else passes through unchanged, so ``load_converted`` reports it as unexpected.
"""
from __future__ import annotations

import math
import re

import torch
from mmengine.logging import print_log

from ..hwt import bias_radius

__all__ = ['convert', 'convert_rpb_table', 'EXPECTED_MISSING']

# documented differences: the output norms of the stages (``norm{i}``) that an ImageNet classifier checkpoint
# does not have (its one final norm becomes the last stage's); ``ConvertedPretrained`` logs them as info
EXPECTED_MISSING = (r'^norm\d+\.(weight|bias)$',)

_DROP = re.compile(r'^(head\.|.*\.attn_mask$|.*relative_position_index$)')
_RPB = re.compile(r'^layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$')
_LAYER = re.compile(r'^layers\.(\d+)\.')


def convert_rpb_table(table: torch.Tensor, window_size: int = 7) -> torch.Tensor:
    """Official ``((2H-1)*(2W-1), heads)`` table (square grid) -> ours ``(heads, 2R+1, 2R+1)``,
    ``R = bias_radius(window_size)``.

    ``out[h, dy + R, dx + R]`` (offset ``key - query``) is the official entry of offset ``query - key`` =
    ``(-cy, -cx)`` with ``cy, cx`` = ``dy, dx`` clamped to ``[-(H-1), H-1]``: the official entry itself for every
    offset the official table holds, the nearest one otherwise.
    """
    if table.ndim != 2:
        raise ValueError(f'official HWT bias table must be 2D ((2H-1)*(2W-1), heads), got {tuple(table.shape)}')
    rows, heads = table.shape
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise ValueError(f'official HWT bias table has {rows} rows, not (2H-1)^2 for a square stage; '
                         f'non-square training resolutions are not supported')
    grid = table.t().reshape(heads, side, side).flip(1, 2)  # [h, (k-q)_y + H-1, (k-q)_x + H-1]
    reach, radius = (side - 1) // 2, bias_radius(window_size)
    index = torch.arange(-radius, radius + 1).clamp(-reach, reach) + reach
    return grid[:, index][:, :, index].contiguous()


def convert(state_dict: dict[str, torch.Tensor], window_size: int = 7) -> dict[str, torch.Tensor]:
    """Map an official HWT state dict (already unwrapped, prefixes stripped) to ``HWT``'s names and shapes.

    ``window_size``: the HWT window size the target model uses (7 for every official model).
    """
    if not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f'window_size must be a positive int, got {window_size!r}')
    stages = {int(m.group(1)) for k in state_dict if (m := _LAYER.match(k))}
    out, filled = {}, {}
    for key, value in state_dict.items():
        if _DROP.match(key):
            continue
        if _RPB.match(key):
            out[key] = convert_rpb_table(value, window_size)
            reach = (math.isqrt(value.shape[0]) - 1) // 2
            if reach < bias_radius(window_size):
                filled.setdefault(reach, []).append(key.rsplit('.attn.', 1)[0])
        elif key.startswith('norm.'):
            if not stages:
                raise ValueError('official HWT checkpoint has a final norm but no layers.*; not an HWT checkpoint?')
            out[f'norm{max(stages)}.' + key[len('norm.'):]] = value
        else:
            out[key] = value
    for reach, blocks in sorted(filled.items()):
        print_log(f'hwt converter: the official bias tables of {", ".join(blocks)} hold offsets up to +-{reach} '
                  f'(their training map); offsets up to +-{bias_radius(window_size)} (any map size) are filled from '
                  f'the nearest official entry', logger='current')
    return out
