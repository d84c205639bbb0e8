"""Shared machinery of every sparsedense backbone.

``SparseBackbone`` is the base class of HWT, HNT, BiFormer, NAT and DiNAT. It owns the arguments that all five
take (``in_channels``, ``out_indices``, ``frozen_stages``, ``norm_eval``, ``with_cp``, ``init_cfg``), validates them
at construction, freezes stages, keeps BatchNorm in eval mode when asked, checks the input tensor and runs blocks
under activation checkpointing. A subclass builds its modules and says which of them form the stem and each stage
(``_stem_modules`` / ``_stage_modules``); everything else here is generic.

Module-level helpers used by the subclasses: ``resolve_arch`` (preset name or dict -> validated arch dict),
``drop_path_schedule`` (stochastic depth rates per block), ``validate_out_indices``, ``checkpoint_call``.

Registration: backbones register in MMEngine's ROOT ``MODELS`` registry (re-exported here as ``MODELS``); the child
registries of mmdet and mmseg fall back to it, so ``mmdet.registry.MODELS.build`` and
``mmseg.registry.MODELS.build`` both find them.
"""
from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.utils.checkpoint as torch_checkpoint
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .graphs import BackboneGraphs
from .layers.linear import cast_linear_weights

__all__ = ['MODELS', 'SparseBackbone', 'resolve_arch', 'drop_path_schedule', 'validate_out_indices',
           'checkpoint_call']


def validate_out_indices(out_indices: int | Sequence[int], num_stages: int) -> tuple[int, ...]:
    """Normalise ``out_indices`` to a sorted tuple of distinct stage indices in ``[0, num_stages)``.

    Negative indices count from the end (``-1`` is the last stage). Raises ValueError for an empty selection,
    a non-integer, an index out of range or a duplicate.
    """
    if isinstance(out_indices, bool) or not isinstance(out_indices, (int, Sequence)) or isinstance(out_indices, str):
        raise ValueError(f'out_indices must be an int or a sequence of ints, got {out_indices!r}')
    indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
    if not indices:
        raise ValueError('out_indices is empty; select at least one stage')
    normalised = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f'out_indices must contain ints, got {index!r} in {out_indices!r}')
        if not -num_stages <= index < num_stages:
            raise ValueError(f'out_indices entry {index} is out of range for {num_stages} stages '
                             f'(valid: {-num_stages}..{num_stages - 1})')
        normalised.append(index % num_stages)
    if len(set(normalised)) != len(normalised):
        raise ValueError(f'out_indices has duplicate stages: {out_indices!r}')
    return tuple(sorted(normalised))


def resolve_arch(arch: str | Mapping[str, Any], presets: Mapping[str, Mapping[str, Any]],
                 required: Sequence[str] | None = None,
                 defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Turn ``arch`` (a preset name or a dict) into a fresh, validated arch dict.

    Args:
        arch: name of one of ``presets`` or a dict with the arch keys.
        presets: ``{name: arch dict}``.
        required: keys a dict ``arch`` must have; default: the keys every preset has, minus ``defaults``' keys.
        defaults: optional keys with their default values, filled in when a dict ``arch`` omits them.

    Returns:
        A deep copy (the caller may mutate it) with ``defaults`` filled in.

    Raises:
        KeyError: unknown preset name (the message lists the valid names).
        ValueError: a dict that misses required keys or has keys that are neither required nor optional,
            or an ``arch`` that is neither a str nor a dict.
    """
    defaults = dict(defaults or {})
    if isinstance(arch, str):
        if arch not in presets:
            raise KeyError(f'unknown arch {arch!r}; valid presets: {sorted(presets)} (or pass a dict)')
        resolved = {**copy.deepcopy(defaults), **copy.deepcopy(dict(presets[arch]))}
        return resolved
    if not isinstance(arch, Mapping):
        raise ValueError(f'arch must be a preset name ({sorted(presets)}) or a dict, got {type(arch).__name__}')
    if required is None:
        key_sets = [set(p) for p in presets.values()]
        required = sorted(set.intersection(*key_sets) - set(defaults)) if key_sets else []
    allowed = set(required) | set(defaults)
    for preset in presets.values():
        allowed |= set(preset)
    missing = [k for k in required if k not in arch]
    if missing:
        raise ValueError(f'arch dict misses required keys {missing}; required: {list(required)}, '
                         f'optional: {sorted(allowed - set(required))}')
    unknown = sorted(set(arch) - allowed)
    if unknown:
        raise ValueError(f'arch dict has unknown keys {unknown}; allowed: {sorted(allowed)}')
    return {**copy.deepcopy(defaults), **copy.deepcopy(dict(arch))}


def drop_path_schedule(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rates rising linearly from 0 to ``drop_path_rate`` over all blocks, split per stage.

    Returns ``rates`` with ``len(rates[i]) == depths[i]`` (the same schedule as Swin/NAT: ``linspace(0, rate, sum)``).
    """
    if not 0.0 <= float(drop_path_rate) < 1.0:
        raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in depths):
        raise ValueError(f'depths must be non-negative ints, got {list(depths)}')
    rates = torch.linspace(0, float(drop_path_rate), sum(depths), dtype=torch.float64, device="cpu").tolist()
    schedule, start = [], 0
    for depth in depths:
        schedule.append(rates[start:start + depth])
        start += depth
    return schedule


def _cast_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with its ``Linear`` / ``Conv2d`` weights pre-cast for autocast
    (``cast_linear_weights``), so that a checkpointed block keeps its fused path and its recomputation casts again."""
    with cast_linear_weights(module):
        return module(*args, **kwargs)


def checkpoint_call(fn: Callable[..., Any], *args: Any, enabled: bool, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, under ``torch.utils.checkpoint`` (non-reentrant) when ``enabled`` and autograd
    records (some input or parameter needs a gradient); plain call otherwise."""
    if enabled and torch.is_grad_enabled():
        return torch_checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return fn(*args, **kwargs)


class SparseBackbone(BaseModule):
    """Base class: argument validation, stage freezing, ``norm_eval``, checkpointing, input checks.

    Subclasses call ``super().__init__(...)`` first, build their modules, implement ``_stem_modules()`` and
    ``_stage_modules(i)``, then call ``self._freeze_stages()`` at the end of their ``__init__``.

    Args:
        num_stages: number of stages of the architecture (4 for all our backbones).
        in_channels: channels of the input image tensor.
        out_indices: stages whose outputs ``forward`` returns (see ``validate_out_indices``).
        frozen_stages: ``-1`` freezes nothing; ``k >= 0`` freezes the stem and stages ``0..k-1`` (including their
            downsamplers and output norms, as returned by ``_stage_modules``): eval mode, ``requires_grad=False``.
        norm_eval: keep every BatchNorm (incl. SyncBatchNorm) in eval mode during training.
        with_cp: run blocks under activation checkpointing (``self.checkpointed``).
        cuda_graphs: replay training steps whose input signature repeats as CUDA graphs (``graphs.py``: a fixed
            input size, e.g. training crops, or recurring batch shapes; other sizes run eagerly). Off with
            ``with_cp`` (checkpointing exists to free activations; a captured step keeps them in its pool).
        init_cfg: MMEngine init config, e.g. ``dict(type='Pretrained', checkpoint=...)`` or
            ``dict(type='ConvertedPretrained', checkpoint=..., convert_from='nat')``.

    Attributes:
        num_stages, in_channels, out_indices (sorted tuple), frozen_stages, norm_eval, with_cp.
        graphs: the :class:`~.graphs.BackboneGraphs` (None without ``cuda_graphs``).
    """

    def __init__(self, *, num_stages: int, in_channels: int = 3, out_indices: int | Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 cuda_graphs: bool = True, init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f'num_stages must be a positive int, got {num_stages!r}')
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) \
                or not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be an int in [-1, {num_stages}], got {frozen_stages!r}')
        for name, flag in (('norm_eval', norm_eval), ('with_cp', with_cp), ('cuda_graphs', cuda_graphs)):
            if not isinstance(flag, bool):
                raise ValueError(f'{name} must be a bool, got {flag!r}')
        self.num_stages = num_stages
        self.in_channels = in_channels
        self.out_indices = validate_out_indices(out_indices, num_stages)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.graphs = BackboneGraphs() if cuda_graphs and not with_cp else None

    def init_weights(self) -> None:
        """MMEngine's ``init_cfg`` handling, after ``converters.init.check_init_cfg`` (an official-format file
        given to plain ``Pretrained`` stops with one line; no weights named logs "training from scratch")."""
        if not self._is_init:
            from .converters.init import check_init_cfg
            check_init_cfg(self)
        super().init_weights()

    # -- structure hooks ------------------------------------------------------------------------------------------
    @abstractmethod
    def _stem_modules(self) -> list[nn.Module]:
        """Modules that run before stage 0 (patch embed / conv stem); frozen when ``frozen_stages >= 0``."""

    @abstractmethod
    def _stage_modules(self, i: int) -> list[nn.Module]:
        """Modules of stage ``i`` (blocks, its downsampler, its output norm); frozen when ``i < frozen_stages``."""

    # -- freezing / train mode ------------------------------------------------------------------------------------
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = list(self._stem_modules())
        for i in range(self.frozen_stages):
            modules.extend(self._stage_modules(i))
        return [m for m in modules if m is not None]

    def _freeze_stages(self) -> None:
        """Put the stem and stages ``0..frozen_stages-1`` in eval mode and stop their gradients."""
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'SparseBackbone':
        """Set train/eval mode, then re-freeze frozen stages and (``norm_eval``) put BatchNorms in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Check ``x`` (``_check_input``), then replay a captured step (``graphs``) or run the subclass's
        ``_forward`` with the autocast weight casts of all its ``Linear`` layers done in one go
        (``layers.linear.cast_linear_weights``; off under ``with_cp``, whose recomputation runs after this call has
        returned)."""
        self._check_input(x)
        if self.graphs is not None:
            outs = self.graphs.run(self, x)
            if outs is not None:
                return outs
        with cast_linear_weights(self, enabled=not self.with_cp):
            return self._forward(x)

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` (already checked) -> tuple of NCHW maps, one per ``out_indices`` entry."""

    # -- forward helpers ------------------------------------------------------------------------------------------
    def checkpointed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` under activation checkpointing when ``with_cp`` and autograd is recording. With ``with_cp`` a
        block (``fn`` a module) casts its own weights inside the checkpoint (``forward``'s backbone-wide cast is
        off then, since the recomputation runs after it has returned), so it keeps the fused path under AMP."""
        if self.with_cp and isinstance(fn, nn.Module):
            return checkpoint_call(_cast_call, fn, *args, enabled=True, **kwargs)
        return checkpoint_call(fn, *args, enabled=self.with_cp, **kwargs)

    def _check_input(self, x: Any) -> None:
        """Raise ValueError naming the problem unless ``x`` is a floating ``(B, in_channels, H, W)`` tensor with
        ``B, H, W >= 1``."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f'{name} expects a torch.Tensor (B, {self.in_channels}, H, W), got {type(x).__name__}')
        if x.ndim != 4:
            raise ValueError(f'{name} expects a 4D input (B, {self.in_channels}, H, W), got ndim={x.ndim} '
                             f'with shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'{name} expects {self.in_channels} input channels (in_channels), got {x.shape[1]} '
                             f'channels in shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(f'{name} expects a floating-point input, got dtype={x.dtype}; convert the image '
                             f'(e.g. x.float()) and normalise it first')
        if min(x.shape[0], x.shape[2], x.shape[3]) < 1:
            raise ValueError(f'{name} expects B, H, W >= 1, got shape {tuple(x.shape)}')
