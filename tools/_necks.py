"""Check the neck's / decode head's input widths against the backbone before the runner builds the model.

A stock config with our backbone swapped in but the ResNet widths left in ``neck.in_channels`` otherwise fails
at the first forward with a convolution shape error. Every sparsedense backbone (and mmdet's Swin) exposes
``num_features``, its output channels per stage; the backbone is built on the ``meta`` device (no memory, no
initialisation) to read them with its ``out_indices``:

- mmdet, or mmseg with a neck: the first neck's ``in_channels`` list must equal the widths of the selected stages;
- mmseg without a neck: ``decode_head`` / ``auxiliary_head``: ``in_channels[k]`` must equal the width of stage
  ``in_index[k]`` (or the int ``in_channels`` that of stage ``in_index``).

Backbones without ``num_features`` (ResNet) and heads of other shapes are not checked.
"""
from __future__ import annotations

import torch

import _runtime


def backbone_widths(backbone_cfg, scope: str):
    """``(widths of the out_indices stages, num_features, out_indices)`` or None when the backbone does not say."""
    from mmengine.registry import MODELS, DefaultScope
    try:
        with DefaultScope.overwrite_default_scope(scope), torch.device('meta'):
            backbone = MODELS.build(backbone_cfg)
    except Exception:  # noqa: BLE001  a bad backbone config is reported by the runner's own build
        return None
    widths, out_indices = getattr(backbone, 'num_features', None), getattr(backbone, 'out_indices', None)
    if widths is None or out_indices is None:
        return None
    widths, out_indices = list(widths), list(out_indices)
    return [widths[i] for i in out_indices], widths, out_indices


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else x


def _head_problem(key: str, head, outs: list[int]) -> str | None:
    if not isinstance(head, dict) or 'in_channels' not in head:
        return None
    given, index = _as_list(head['in_channels']), _as_list(head.get('in_index', -1))
    if isinstance(given, int) and isinstance(index, int) and -len(outs) <= index < len(outs):
        want = outs[index]
    elif isinstance(given, list) and isinstance(index, list) and all(-len(outs) <= i < len(outs) for i in index):
        want = [outs[i] for i in index]
    else:
        return None
    return None if given == want else f'{key}.in_channels={given} (in_index {index}) should be {want}'


def check_neck_widths(cfg, scope: str) -> None:
    """Raise ConfigCheckError naming the key, the value and the widths the backbone gives (module docstring)."""
    model = cfg.get('model')
    if not isinstance(model, dict) or not isinstance(model.get('backbone'), dict):
        return
    found = backbone_widths(model['backbone'], scope)
    if found is None:
        return
    outs, widths, out_indices = found
    problems = []
    neck = model.get('neck')
    neck = neck[0] if isinstance(neck, (list, tuple)) and neck else neck
    if isinstance(neck, dict):
        given = _as_list(neck.get('in_channels'))
        if isinstance(given, list) and given != outs:
            problems.append(f'model.neck.in_channels={given} should be {outs}')
    elif scope == 'mmseg':
        for key in ('decode_head', 'auxiliary_head'):
            heads = model.get(key)
            for i, head in enumerate(heads if isinstance(heads, (list, tuple)) else [heads]):
                k = f'model.{key}' if not isinstance(heads, (list, tuple)) else f'model.{key}.{i}'
                problem = _head_problem(k, head, outs)
                if problem:
                    problems.append(problem)
    if problems:
        raise _runtime.ConfigCheckError(
            f"{'; '.join(problems)}: the {model['backbone'].get('type')} backbone gives {widths} channels per stage "
            f'and out_indices {tuple(out_indices)} selects {outs}')
