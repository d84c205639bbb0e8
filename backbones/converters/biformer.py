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

Keys that fit none of these patterns pass through unchanged with a WARNING naming them, so the loader reports
them as unexpected (a different format, e.g. BiFormer-STL, does not load silently). A one-line summary
(kept / renamed / dropped) goes to the MMEngine logger.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from mmengine.logging import print_log

from .common import strip_prefixes, unwrap_checkpoint

__all__ = ['convert', 'convert_key', 'EXPECTED_MISSING']

# documented differences: the output norms of the stages (``norm{i}``) that an ImageNet classifier checkpoint
# does not have (its one final norm becomes the last stage's); ``ConvertedPretrained`` logs them as info
EXPECTED_MISSING = (r'^norm\d+\.(weight|bias)$',)

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

    Unknown keys pass through unchanged (logged as a WARNING) for the loader to report.
    """
    state = strip_prefixes(unwrap_checkpoint(state_dict))
    dropped = []
    if any(k.startswith('backbone.') for k in state):  # a whole dense-task model: keep the backbone only
        dropped += [k for k in state if not k.startswith('backbone.')]
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    converted, renamed, unknown = {}, 0, []
    for key, value in state.items():
        try:
            new_key = convert_key(key)
        except ValueError:
            unknown.append(key)
            new_key = key
        if new_key is None:
            dropped.append(key)
            continue
        renamed += new_key != key
        converted[new_key] = value
    print_log(f'biformer converter: {len(converted)} keys kept ({renamed} renamed), {len(dropped)} dropped'
              + (f': {", ".join(sorted(dropped)[:8])}{" ..." if len(dropped) > 8 else ""}' if dropped else ''),
              logger='current', level=logging.INFO)
    if unknown:
        shown = ', '.join(unknown[:10]) + (f' ... ({len(unknown)} in all)' if len(unknown) > 10 else '')
        print_log(f'biformer converter: {len(unknown)} keys are not official BiFormer (T/S/B) backbone keys, '
                  f'passed through unchanged: {shown}', logger='current', level=logging.WARNING)
    return converted
