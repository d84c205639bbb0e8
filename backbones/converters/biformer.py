"""Official BiFormer checkpoints (rayleizhu/BiFormer) -> our ``BiFormer`` parameter names.

Accepted inputs: the ImageNet releases (``{'model': state_dict}``, keys ``downsample_layers.*``, ``stages.*``,
``norm.*``, ``head.*``), the mmdet / mmseg checkpoints of the official dense wrappers (``{'state_dict': ...}``,
keys ``backbone.*`` plus ``neck.*`` / ``decode_head.*`` ...), or a bare state dict; ``module.`` prefixes are
stripped.

Mapping (everything else keeps its name):

=================================================== ==============================================
official                                            ours
=================================================== ==============================================
``downsample_layers.{0: 0,1,3,4 | 1-3: 0,1}.*``     same (conv / BN of stem and downsamplers)
``stages.i.j.{pos_embed,norm1,norm2}.*``            same
``stages.i.j.attn.qkv.qkv.{weight,bias}`` (BRA)     ``stages.i.j.attn.qkv.*``
``stages.i.j.attn.wo.*`` (BRA)                      ``stages.i.j.attn.proj.*``
``stages.i.j.attn.{qkv,proj,lepe}.*`` (global)      same
``stages.i.j.attn.lepe.*`` (BRA)                    same
``stages.i.j.mlp.0.*`` / ``mlp.3.*``                ``stages.i.j.mlp.fc1.*`` / ``mlp.fc2.*``
``stages.i.j.gamma1`` / ``gamma2`` (layer scale)     same
``extra_norms.i.*`` (dense wrappers)                ``norm{i}.*``
``head.*``, ``norm.*``, ``pre_logits.*`` (ImageNet)  dropped
non-backbone keys of a dense checkpoint             dropped
=================================================== ==============================================

Keys that fit none of these patterns raise a ValueError (a different format, e.g. BiFormer-STL, must not load
silently). A one-line summary (kept / renamed / dropped) goes to the MMEngine logger.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from mmengine.logging import print_log

__all__ = ['convert', 'convert_key']

_DROPPED = re.compile(r'^(head|norm|pre_logits)\.')
_RENAMES = (
    (re.compile(r'^(stages\.\d+\.\d+\.attn)\.qkv\.qkv\.(weight|bias)$'), r'\1.qkv.\2'),
    (re.compile(r'^(stages\.\d+\.\d+\.attn)\.wo\.(weight|bias)$'), r'\1.proj.\2'),
    (re.compile(r'^(stages\.\d+\.\d+\.mlp)\.0\.(weight|bias)$'), r'\1.fc1.\2'),
    (re.compile(r'^(stages\.\d+\.\d+\.mlp)\.3\.(weight|bias)$'), r'\1.fc2.\2'),
    (re.compile(r'^extra_norms\.(\d+)\.(weight|bias)$'), r'norm\1.\2'),
)
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_KEPT = (
    re.compile(rf'^downsample_layers\.0\.[0134]\.{_BN}$'),
    re.compile(rf'^downsample_layers\.[123]\.[01]\.{_BN}$'),
    re.compile(r'^stages\.\d+\.\d+\.(pos_embed|norm1|norm2)\.(weight|bias)$'),
    re.compile(r'^stages\.\d+\.\d+\.attn\.(qkv|proj|lepe)\.(weight|bias)$'),
    re.compile(r'^stages\.\d+\.\d+\.gamma[12]$'),
)


def _unwrap(checkpoint: Mapping) -> Mapping:
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def convert_key(key: str) -> str | None:
    """Our name for one official (prefix-free) key, ``None`` for a dropped key; ValueError for an unknown key."""
    if _DROPPED.match(key):
        return None
    for pattern, replacement in _RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    if any(pattern.match(key) for pattern in _KEPT):
        return key
    raise ValueError(f'not an official BiFormer (T/S/B) key: {key!r}')


def convert(state_dict: Mapping) -> dict:
    """Map an official BiFormer checkpoint / state dict to ours: ``{our_key: tensor}`` (tensors not copied).

    Raises ValueError listing the keys that are not official BiFormer backbone keys.
    """
    state = dict(_unwrap(state_dict))
    if state and all(k.startswith('module.') for k in state):  # saved from a (Distributed)DataParallel wrapper
        state = {k[len('module.'):]: v for k, v in state.items()}
    dropped = []
    if any(k.startswith('backbone.') for k in state):  # a dense-task checkpoint: keep the backbone only
        dropped += [k for k in state if not k.startswith('backbone.')]
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    converted, renamed, unknown = {}, 0, []
    for key, value in state.items():
        try:
            new_key = convert_key(key)
        except ValueError:
            unknown.append(key)
            continue
        if new_key is None:
            dropped.append(key)
            continue
        renamed += new_key != key
        converted[new_key] = value
    if unknown:
        shown = ', '.join(unknown[:10]) + (f' ... ({len(unknown)} in all)' if len(unknown) > 10 else '')
        raise ValueError(f'{len(unknown)} keys are not official BiFormer backbone keys: {shown}')
    if not converted:
        raise ValueError('no BiFormer backbone keys found in the checkpoint')
    print_log(f'biformer converter: {len(converted)} keys kept ({renamed} renamed), {len(dropped)} dropped'
              + (f': {", ".join(sorted(dropped)[:8])}{" ..." if len(dropped) > 8 else ""}' if dropped else ''),
              logger='current', level=logging.INFO)
    return converted
