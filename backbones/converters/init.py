"""``ConvertedPretrained``: an MMEngine weight initializer that loads an OFFICIAL checkpoint through a converter.

Use from a backbone config (the zoo configs name the official ImageNet checkpoints this way)::

    init_cfg=dict(type='ConvertedPretrained', convert_from='nat',
                  checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth')

``BaseModule.init_weights`` builds it from ``mmengine.registry.WEIGHT_INITIALIZERS`` and calls it on the backbone.

- Where the file comes from (:func:`resolve_checkpoint`): a local path is used as is; an ``http(s)`` URL is
  downloaded ONCE into the torch hub cache (``torch.hub.get_dir()/checkpoints/<filename>``; ``TORCH_HOME`` moves
  it) with a progress bar, written atomically, and checked against ``sha256`` when given (torch-hub-style names
  ``name-<hex>.pth`` are checked against their hash prefix); later runs read the cached file. A link no program
  can fetch (a Google Drive page) and a failed download (no network) stop with one line naming the URL and the
  local path to put the file at.
- How it is read: ``torch.load(weights_only=True)`` (tensors only; never unpickles arbitrary objects), unwrapped
  (``state_dict`` / ``model`` ...), optionally narrowed to one ``prefix``, stripped of wrapper prefixes
  (``module.`` / ``model.`` / ``backbone.``), converted with ``get_converter(convert_from)``.
- How it is checked (``common.load_converted``): every missing, unexpected and resized key is listed; the format's
  documented differences (its converter module's ``EXPECTED_MISSING``, e.g. the output norms an ImageNet classifier
  does not have) are logged as info; anything else is an error unless ``strict=False``. Bias tables of another
  kernel size are an error unless ``resize_bias_tables=True``.

Our own checkpoints (already in our names) load with MMEngine's plain ``dict(type='Pretrained', checkpoint=...)``;
``check_init_cfg`` (called by ``SparseBackbone.init_weights``) stops with one line when such a ``Pretrained`` entry
names an official-format file, and logs when ``init_cfg`` names no weights at all (training from scratch).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
import urllib.error
import urllib.parse
from collections.abc import Mapping

import torch
from mmengine.fileio import get_local_path
from mmengine.logging import MMLogger, print_log


class PretrainedError(Exception):
    """The weights an ``init_cfg`` names cannot be used; the message is one line saying why and what to do (the
    tools print it as such). Subclasses keep the builtin types callers may catch."""


class PretrainedNotFound(PretrainedError, FileNotFoundError):
    """The file is not here and cannot be fetched (missing path, a link a program cannot follow, no network)."""


class PretrainedInvalid(PretrainedError, ValueError):
    """The file or its ``init_cfg`` is unusable (checksum, unsafe contents, unknown format, wrong loader)."""
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import nn

from . import FORMATS, get_converter
from .common import load_converted, select_prefix, strip_prefixes, unwrap_checkpoint

__all__ = ['PretrainedError', 'PretrainedNotFound', 'PretrainedInvalid', 'ConvertedPretrained',
           'load_official_checkpoint', 'resolve_checkpoint', 'cache_path', 'check_init_cfg', 'FORMAT_OF']

# backbone class -> the official checkpoint format of its source work
FORMAT_OF = {'HWT': 'hwt', 'HNT': 'hnt', 'BiFormer': 'biformer', 'NAT': 'nat', 'DiNAT': 'dinat'}
_DRIVE = re.compile(r'^https?://(drive|docs)\.google\.com/')
_HUB_HASH = re.compile(r'-([a-f0-9]{6,64})\.')


def _is_url(path: str) -> bool:
    return str(path).startswith(('http://', 'https://'))


def cache_path(url: str, filename: str | None = None) -> str:
    """Where a downloaded checkpoint lives: ``torch.hub.get_dir()/checkpoints/<filename>`` (``filename`` defaults
    to the URL's last path component)."""
    name = filename or os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise PretrainedInvalid(f'cannot name the cache file of {url}; give filename=...')
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path: str, sha256: str | None) -> None:
    """Raise ValueError when the file's sha256 does not start with the expected hex digest (or prefix)."""
    want = sha256 or (m.group(1) if (m := _HUB_HASH.search(os.path.basename(path))) else None)
    if want and not _sha256(path).startswith(want.lower()):
        raise PretrainedInvalid(f'{path}: sha256 {_sha256(path)[:16]}... does not match the expected {want}; '
                                f'delete the file and download it again')


def resolve_checkpoint(checkpoint: str, filename: str | None = None, sha256: str | None = None,
                       progress: bool = True) -> str:
    """The local file of ``checkpoint`` (a path or an http(s) URL; see the module docstring).

    Raises FileNotFoundError (missing local file; a Google Drive link not yet downloaded; a failed download, the
    message naming the URL and the path to put the file at) or ValueError (checksum mismatch).
    """
    checkpoint = str(checkpoint)
    if not _is_url(checkpoint):
        if not os.path.isfile(checkpoint):
            raise PretrainedNotFound(f'checkpoint file not found: {checkpoint}')
        _check_hash(checkpoint, sha256)
        return checkpoint
    drive = bool(_DRIVE.match(checkpoint))
    if drive and not filename:
        raise PretrainedInvalid(f'{checkpoint}: a Google Drive link needs filename=... (the name to keep it under)')
    local = cache_path(checkpoint, filename)
    if os.path.isfile(local):
        _check_hash(local, sha256)
        return local
    if drive:
        raise PretrainedNotFound(f'{checkpoint} is a Google Drive page that a program cannot fetch: download it in a '
                                f'browser and put it at {local} (or set checkpoint= to its local path)')
    os.makedirs(os.path.dirname(local), exist_ok=True)
    print_log(f'downloading {checkpoint} to {local}', logger='current')
    try:  # writes a temporary file in the same folder and moves it into place when complete
        torch.hub.download_url_to_file(checkpoint, local, progress=progress)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, 'reason', None) or err
        raise PretrainedNotFound(f'cannot download {checkpoint} ({reason}); download it yourself and put it at '
                                f'{local} (or set checkpoint= to a local path)') from err
    try:
        _check_hash(local, sha256)
    except ValueError:
        os.remove(local)
        raise
    print_log(f'{local}: sha256 {_sha256(local)}', logger='current')
    return local


def load_official_checkpoint(path: str, map_location: str | torch.device = 'cpu') -> dict[str, torch.Tensor]:
    """Read a checkpoint file with ``weights_only=True`` and return its unwrapped tensor dict.

    Raises FileNotFoundError for a missing local file and ValueError for a file that needs full unpickling
    (e.g. it stores custom Python objects) or holds no tensors.
    """
    if '://' not in str(path) and not os.path.isfile(path):
        raise PretrainedNotFound(f'checkpoint file not found: {path}')
    with get_local_path(path) as local:
        try:
            obj = torch.load(local, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises UnpicklingError / RuntimeError for disallowed globals
            try:  # name the objects stored beside the weights (e.g. a training config or argparse.Namespace)
                found = ', '.join(torch.serialization.get_unsafe_globals_in_checkpoint(local)) or None
            except Exception:  # noqa: BLE001  (older torch, or not a zip checkpoint)
                found = None
            what = f'it stores Python objects ({found})' if found else \
                f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else err}'
            raise PretrainedInvalid(f'{path}: cannot be read with torch.load(weights_only=True) ({what}); re-save '
                                    f"only its weights (e.g. torch.save(torch.load(f, weights_only=False)['model'], "
                                    f'out)) in a trusted environment') from err
    return unwrap_checkpoint(obj)


def _converter_kwargs(fmt: str, module: nn.Module) -> dict:
    """Arguments of the format's converter that come from the target module (HWT: its window size)."""
    if fmt == 'hwt' and hasattr(module, 'window_size'):
        return dict(window_size=module.window_size)
    return {}


def expected_missing(fmt: str) -> tuple[str, ...]:
    """Regexes of module keys an official ``fmt`` checkpoint documentedly lacks (converter's ``EXPECTED_MISSING``)."""
    return tuple(getattr(importlib.import_module(f'{__package__}.{fmt}'), 'EXPECTED_MISSING', ()))


@WEIGHT_INITIALIZERS.register_module()
class ConvertedPretrained:
    """Initialise a module from an official checkpoint of format ``convert_from``.

    Args:
        checkpoint: local path or http(s) URL (downloaded once into the torch hub cache).
        convert_from: one of ``backbones.converters.FORMATS``.
        prefix: keep only the keys under this prefix (e.g. ``'backbone'`` of a whole detector checkpoint).
        map_location: device to load tensors to.
        strict: raise when a key is missing, unexpected or mismatched beyond the format's documented differences
            (default); False logs them and loads the rest.
        resize_bias_tables: resize bias tables of another kernel / window size to the module's (listed); default
            False: such a table is an error.
        filename: name of the cached download (default: the URL's last path component; needed for links that end
            in ``/content`` or a Google Drive page).
        sha256: expected sha256 of the file (hex digest or a prefix of it), checked after download and on reuse.
    """

    def __init__(self, checkpoint: str, convert_from: str, prefix: str | None = None,
                 map_location: str = 'cpu', strict: bool = True, resize_bias_tables: bool = False,
                 filename: str | None = None, sha256: str | None = None) -> None:
        if convert_from not in FORMATS:
            raise PretrainedInvalid(f'convert_from={convert_from!r} is not a known format; expected one of {FORMATS}')
        self.checkpoint, self.convert_from, self.prefix = checkpoint, convert_from, prefix
        self.map_location, self.strict, self.resize_bias_tables = map_location, strict, resize_bias_tables
        self.filename, self.sha256 = filename, sha256

    def __call__(self, module: nn.Module) -> None:
        try:
            self._load(module)
        except PretrainedError:
            raise
        except (ValueError, RuntimeError, KeyError) as err:     # conversion / strict loading: one line, named
            raise PretrainedInvalid(f'{self.checkpoint} ({self.convert_from}): {err}') from err

    def _load(self, module: nn.Module) -> None:
        logger = MMLogger.get_current_instance()
        local = resolve_checkpoint(self.checkpoint, self.filename, self.sha256)
        logger.info(f'load {self.convert_from} checkpoint from {local} (converted)')
        state_dict = load_official_checkpoint(local, self.map_location)
        if self.prefix:
            state_dict = select_prefix(state_dict, self.prefix)
        state_dict = get_converter(self.convert_from)(strip_prefixes(state_dict),
                                                      **_converter_kwargs(self.convert_from, module))
        load_converted(module, state_dict, strict=self.strict, logger=logger,
                       expected_missing=expected_missing(self.convert_from), resize_tables=self.resize_bias_tables)
        if hasattr(module, '_params_init_info'):
            from mmengine.model.weight_init import update_init_info
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return f'{self.__class__.__name__}: load {self.convert_from} checkpoint from {self.checkpoint}'


def _matching(module_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> int:
    return sum(1 for k, v in sd.items() if k in module_sd and tuple(module_sd[k].shape) == tuple(v.shape))


def check_init_cfg(module: nn.Module) -> None:
    """Before ``BaseModule.init_weights`` runs ``module.init_cfg``: log when it names no weights (training from
    scratch), and stop with one line when a plain ``Pretrained`` entry names a local file in an official format
    (MMEngine would load almost nothing from it and go on)."""
    cfgs = module.init_cfg if isinstance(module.init_cfg, list) else [module.init_cfg]
    cfgs = [c for c in cfgs if isinstance(c, Mapping)]
    name = type(module).__name__
    if not any(c.get('type') in ('Pretrained', 'ConvertedPretrained') for c in cfgs):
        print_log(f'{name}: init_cfg names no pretrained weights: random initialisation (training from scratch)',
                  logger='current')
        return
    fmt = FORMAT_OF.get(name)
    for cfg in cfgs:
        path = cfg.get('checkpoint')
        if cfg.get('type') != 'Pretrained' or fmt is None or not path or _is_url(path) or not os.path.isfile(path):
            continue
        try:
            state_dict = load_official_checkpoint(path)
            if cfg.get('prefix'):
                state_dict = select_prefix(state_dict, cfg['prefix'])
            state_dict = strip_prefixes(state_dict)
        except (ValueError, KeyError):
            continue  # MMEngine's own loader reports what it cannot read
        own = module.state_dict()
        if _matching(own, state_dict) == len(own):
            continue  # loads as it is (our own names)
        try:
            converted = get_converter(fmt)(state_dict, **_converter_kwargs(fmt, module))
        except (ValueError, KeyError, RuntimeError):
            continue  # not the official format
        if _matching(own, converted) > _matching(own, state_dict):
            raise PretrainedInvalid(f"init_cfg Pretrained: {path} is an official {fmt} checkpoint (its keys need "
                             f"converting); use init_cfg=dict(type='ConvertedPretrained', checkpoint='{path}', "
                             f"convert_from='{fmt}') or convert it with tools/convert_checkpoint.py")
