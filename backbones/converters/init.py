"""``ConvertedPretrained``: an MMEngine weight initializer that loads an OFFICIAL checkpoint through a converter.

Use from a backbone config::

    init_cfg=dict(type='ConvertedPretrained', checkpoint='nat_tiny.pth', convert_from='nat')

``BaseModule.init_weights`` builds it from ``mmengine.registry.WEIGHT_INITIALIZERS`` and calls it on the backbone.
The file is read with ``torch.load(weights_only=True)`` (tensors only; never unpickles arbitrary objects), unwrapped
(``state_dict`` / ``model`` ...), optionally narrowed to one ``prefix``, stripped of wrapper prefixes
(``module.`` / ``model.`` / ``backbone.``), converted with ``get_converter(convert_from)`` and loaded with
``load_converted`` (every missing / unexpected / mismatched key is logged; nothing matching raises).
Our own checkpoints (already in our names) load with MMEngine's plain ``dict(type='Pretrained', checkpoint=...)``.
"""
from __future__ import annotations

import os

import torch
from mmengine.fileio import get_local_path
from mmengine.logging import MMLogger
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import nn

from . import FORMATS, get_converter
from .common import load_converted, select_prefix, strip_prefixes, unwrap_checkpoint

__all__ = ['ConvertedPretrained', 'load_official_checkpoint']


def load_official_checkpoint(path: str, map_location: str | torch.device = 'cpu') -> dict[str, torch.Tensor]:
    """Read a checkpoint file with ``weights_only=True`` and return its unwrapped tensor dict.

    Raises FileNotFoundError for a missing local file and ValueError for a file that needs full unpickling
    (e.g. it stores custom Python objects) or holds no tensors.
    """
    if '://' not in str(path) and not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    with get_local_path(path) as local:
        try:
            obj = torch.load(local, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises UnpicklingError / RuntimeError for disallowed globals
            raise ValueError(f'{path}: cannot be read with torch.load(weights_only=True) ({type(err).__name__}: '
                             f'{str(err).splitlines()[0] if str(err) else err}); re-save it as a plain state dict '
                             f'from a trusted environment') from err
    return unwrap_checkpoint(obj)


@WEIGHT_INITIALIZERS.register_module()
class ConvertedPretrained:
    """Initialise a module from an official checkpoint of format ``convert_from``.

    Args:
        checkpoint: local path or URL understood by ``mmengine.fileio``.
        convert_from: one of ``backbones.converters.FORMATS``.
        prefix: keep only the keys under this prefix (e.g. ``'backbone'`` of a whole detector checkpoint).
        map_location: device to load tensors to.
        strict: raise when any key is missing / unexpected / mismatched (default: log them).
    """

    def __init__(self, checkpoint: str, convert_from: str, prefix: str | None = None,
                 map_location: str = 'cpu', strict: bool = False) -> None:
        if convert_from not in FORMATS:
            raise ValueError(f'convert_from={convert_from!r} is not a known format; expected one of {FORMATS}')
        self.checkpoint, self.convert_from, self.prefix = checkpoint, convert_from, prefix
        self.map_location, self.strict = map_location, strict

    def __call__(self, module: nn.Module) -> None:
        logger = MMLogger.get_current_instance()
        logger.info(f'load {self.convert_from} checkpoint from {self.checkpoint} (converted)')
        state_dict = load_official_checkpoint(self.checkpoint, self.map_location)
        if self.prefix:
            state_dict = select_prefix(state_dict, self.prefix)
        state_dict = get_converter(self.convert_from)(strip_prefixes(state_dict))
        load_converted(module, state_dict, strict=self.strict, logger=logger)
        if hasattr(module, '_params_init_info'):
            from mmengine.model.weight_init import update_init_info
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return f'{self.__class__.__name__}: load {self.convert_from} checkpoint from {self.checkpoint}'
