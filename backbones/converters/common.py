"""Plumbing shared by the checkpoint converters: unwrap, strip prefixes, resize bias tables, load loudly.

- ``unwrap_checkpoint(obj)``: the state dict inside a loaded checkpoint (``state_dict`` / ``model`` / ... or the
  dict itself).
- ``strip_prefixes(state_dict, prefixes)``: drop wrapper prefixes such as ``module.`` / ``model.`` / ``backbone.``.
- ``select_prefix(state_dict, prefix)``: keep one part of a bigger checkpoint (``backbone.*`` of a detector).
- ``resize_rpb(table, size)``: bicubic resize of a relative-position-bias table ``(heads, Sh, Sw)`` on its
  ``(2r-1) x (2r-1)`` offset grid, per head (linear for 1D tables ``(heads, 2r-1)``).
- ``adapt_rpb_tables(state_dict, reference)``: resize every bias table whose grid differs from the module's.
- ``load_converted(module, state_dict, strict=False, logger=None, expected_missing=(), resize_tables=False)``:
  load and log EVERY missing, unexpected, resized and shape-mismatched key; raise if nothing matched (or, with
  ``strict``, if anything did not beyond the documented ``expected_missing`` keys).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['DEFAULT_PREFIXES', 'RPB_SUFFIXES', 'LoadResult', 'unwrap_checkpoint', 'strip_prefixes', 'select_prefix',
           'resize_rpb', 'adapt_rpb_tables', 'load_converted']

DEFAULT_PREFIXES = ('module.', 'model.', 'backbone.')
RPB_SUFFIXES = ('relative_position_bias_table', 'rpb')
_CONTAINER_KEYS = ('state_dict', 'model', 'model_state', 'module', 'net')


class LoadResult(NamedTuple):
    """Outcome of ``load_converted``: loaded keys, keys the module wanted but did not get, keys of the state dict
    the module does not have, ``(key, checkpoint shape, module shape)`` for skipped shape mismatches, and the bias
    tables that were resized (``(key, checkpoint shape, module shape)``)."""
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    resized: tuple = ()


def unwrap_checkpoint(obj: Mapping) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a loaded checkpoint.

    Accepts a plain state dict or a dict holding it under one of ``state_dict``, ``model``, ``model_state``,
    ``module``, ``net`` (nested containers are unwrapped too). Non-tensor entries of the final dict are dropped.
    Raises ValueError when no tensors are found.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f'checkpoint must be a dict, got {type(obj).__name__}')
    current = obj
    for _ in range(4):
        if any(isinstance(v, torch.Tensor) for v in current.values()):
            break
        inner = next((current[k] for k in _CONTAINER_KEYS if isinstance(current.get(k), Mapping)), None)
        if inner is None:
            break
        current = inner
    tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f'no tensors found in checkpoint (top-level keys: {sorted(map(str, obj))[:20]})')
    return tensors


def strip_prefixes(state_dict: Mapping[str, torch.Tensor],
                   prefixes: Sequence[str] = DEFAULT_PREFIXES) -> dict[str, torch.Tensor]:
    """Remove leading wrapper prefixes (repeatedly, e.g. ``module.backbone.x`` -> ``x``) from every key.

    A prefix is removed only when ALL keys carry it, so a genuine submodule called ``model`` is not mangled and no
    two keys can collapse onto one name. To take one part of a whole detector checkpoint (``backbone.*`` next to
    ``neck.*``) use ``select_prefix``.
    """
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def select_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep only the keys under ``prefix`` (with or without the trailing dot) and strip it; ValueError if none."""
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f'no key starts with {prefix!r} (e.g. {sorted(state_dict)[:5]})')
    return out


def resize_rpb(table: torch.Tensor, size: int | tuple[int, ...]) -> torch.Tensor:
    """Resize a relative-position-bias table on its offset grid, per head.

    2D tables ``(heads, Sh, Sw)`` -> ``(heads, Th, Tw)`` bicubically (``size`` int: square); 1D tables
    ``(heads, S)`` (e.g. HNT's) -> ``(heads, T)`` linearly. The grid holds the offsets ``-(r-1)..(r-1)``
    (``S = 2r-1``); ``align_corners=True`` keeps the zero-offset centre and the extreme offsets on grid points.
    Computed in float32, returned in the input dtype; a table already of that size is returned unchanged.
    """
    if table.ndim not in (2, 3):
        raise ValueError(f'resize_rpb expects a (heads, Sh, Sw) or (heads, S) table, got shape {tuple(table.shape)}')
    spatial = table.ndim - 1
    target = (size,) * spatial if isinstance(size, int) else tuple(size)
    if len(target) != spatial or min(target) < 1:
        raise ValueError(f'target size {size!r} does not fit a table of shape {tuple(table.shape)}')
    if target == tuple(table.shape[1:]):
        return table
    mode = 'bicubic' if spatial == 2 else 'linear'
    resized = F.interpolate(table.detach().float().unsqueeze(0), size=target, mode=mode, align_corners=True)
    return resized.squeeze(0).to(table.dtype)


def _is_rpb_key(key: str) -> bool:
    return key.rsplit('.', 1)[-1] in RPB_SUFFIXES


def adapt_rpb_tables(state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                     logger: logging.Logger | None = None) -> dict[str, torch.Tensor]:
    """Resize the bias tables (keys ending in ``relative_position_bias_table`` or ``rpb``, shape ``(heads, Sh, Sw)``
    or ``(heads, S)``) whose grid differs from the same key in ``reference`` (the module's state dict) but whose
    head count and rank match. Other keys pass through unchanged; each resize is logged (info: it was asked for)."""
    out = dict(state_dict)
    for key, value in state_dict.items():
        target = reference.get(key)
        if (target is None or not _is_rpb_key(key) or value.ndim not in (2, 3) or target.ndim != value.ndim
                or value.shape == target.shape or value.shape[0] != target.shape[0]):
            continue
        out[key] = resize_rpb(value, tuple(target.shape[1:]))
        if logger is not None:
            logger.info('resized bias table %s from %s to %s (%s)', key, tuple(value.shape), tuple(target.shape),
                        'bicubic' if value.ndim == 3 else 'linear')
    return out


def load_converted(module: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = False,
                   logger: logging.Logger | None = None, expected_missing: Sequence[str] = (),
                   resize_tables: bool = False) -> LoadResult:
    """Load a converted state dict into ``module``, reporting every key that did not load as it is.

    With ``resize_tables`` bias tables of another grid size are resized first (``adapt_rpb_tables``, each listed);
    without it they stay shape mismatches. Keys whose shape differs are skipped and reported as mismatched. Missing
    keys matching one of the ``expected_missing`` regexes (the format's documented differences) are logged at INFO,
    every other missing, unexpected and mismatched key at WARNING, one line each, plus a summary.

    Raises:
        RuntimeError: no key of ``state_dict`` matched the module (wrong format or wrong model), or ``strict`` and
            some key is missing (beyond ``expected_missing``), unexpected or mismatched.
    """
    logger = logger or logging.getLogger(__name__)
    own = module.state_dict()
    adapted = adapt_rpb_tables(state_dict, own, logger=logger) if resize_tables else dict(state_dict)
    resized = tuple((k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in adapted.items()
                    if v is not state_dict[k])
    loadable, mismatched = {}, []
    for key, value in adapted.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        elif key in own:
            loadable[key] = value
    patterns = [re.compile(p) for p in expected_missing]
    missing = [k for k in own if k not in loadable]
    documented = [k for k in missing if any(p.search(k) for p in patterns)]
    undocumented = [k for k in missing if k not in documented]
    unexpected = [k for k in adapted if k not in own]
    name = type(module).__name__
    if not loadable:
        raise RuntimeError(f'no key of the checkpoint matches {name}: {len(adapted)} checkpoint keys (e.g. '
                           f'{sorted(adapted)[:5]}), {len(own)} module keys (e.g. {list(own)[:5]}); wrong format '
                           f'or wrong converter?')
    for key in documented:
        logger.info('%s: key not in this checkpoint format (kept its initial value, expected): %s', name, key)
    for key in undocumented:
        logger.warning('%s: missing key (kept its initial value): %s', name, key)
    for key in unexpected:
        logger.warning('%s: unexpected key (ignored): %s', name, key)
    for key, got, want in mismatched:
        hint = ' (a bias table of another kernel / window size: resize_bias_tables=True resizes it)' \
            if _is_rpb_key(key) else ''
        logger.warning('%s: shape mismatch (ignored): %s checkpoint %s vs module %s%s', name, key, got, want, hint)
    problems = len(undocumented) + len(unexpected) + len(mismatched)
    summary = (f'{name}: loaded {len(loadable)}/{len(own)} keys ({len(resized)} resized); {len(missing)} missing '
               f'({len(documented)} expected), {len(unexpected)} unexpected, {len(mismatched)} shape-mismatched')
    (logger.warning if problems else logger.info)(summary)
    if strict and problems:
        raise RuntimeError(f'strict load failed: {summary}; missing={undocumented[:10]} unexpected={unexpected[:10]} '
                           f'mismatched={mismatched[:10]}')
    # Non-persistent buffers never appear in state_dict(), so loading with strict=False only skips those we report.
    module.load_state_dict(loadable, strict=False)
    return LoadResult(sorted(loadable), missing, unexpected, mismatched, resized)
