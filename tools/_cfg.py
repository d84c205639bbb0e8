"""Reading a config the same way in every tool, and making sure `backbones` / `heads` are ours.

- ``read_config(path, options)``: the file must exist; ``Config.fromfile`` (which imports ``custom_imports``); our
  packages must not be shadowed; mmdet's or mmseg's modules registered (``default_scope``); ``--cfg-options``
  checked, then applied with ``data_root=DIR`` moving every path under the config's data_root. train.py,
  test.py, browse_dataset.py, demo.py, benchmark.py and get_flops.py all read configs through it.
- ``check_own_packages()``: our packages have generic names; a research repository's own ``backbones/`` or
  ``heads/`` folder that comes first on ``sys.path`` is imported instead of ours, and mmengine then reports
  "HWT is not in the model registry". This names the folder instead, in one line.
- ``hidden_packages()``: the other way round (the tools put this repository first on ``sys.path``, so a config
  whose own modules import the user's ``backbones.x`` gets ours): other packages of the same names on
  ``sys.path``, named when such an import fails or a type is missing from the registry.
"""
from __future__ import annotations

import os.path as osp
import sys
from pathlib import Path

import _runtime

REPO = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ('backbones', 'heads')


def _origin(module) -> Path | None:
    """The package folder (or module file) a module was imported from."""
    file = getattr(module, '__file__', None)
    if file:
        path = Path(file).resolve()
        return path.parent if path.name == '__init__.py' else path
    paths = list(getattr(module, '__path__', []) or [])  # a namespace package (folder without __init__.py)
    return Path(paths[0]).resolve() if paths else None


def check_own_packages(names=OUR_PACKAGES) -> None:
    """Raise ConfigCheckError if an imported ``backbones`` / ``heads`` is not the one of this repository."""
    for name in names:
        module = sys.modules.get(name)
        if module is None:
            continue
        where, ours = _origin(module), REPO / name
        if where != ours:
            raise _runtime.ConfigCheckError(
                f"'{name}' was imported from {where}, not sparsedense's {ours}: a package of yours with the same name "
                f"comes first on sys.path and shadows ours; rename it (or take its parent folder off PYTHONPATH)")


def hidden_packages(names=OUR_PACKAGES) -> list[str]:
    """Folders / modules on sys.path named like our packages that are not ours (Python imports only one)."""
    found = []
    for entry in sys.path:
        base = Path(entry or '.').resolve()
        for name in names:
            for cand in (base / name, base / f'{name}.py'):
                if cand.exists() and cand.resolve() != (REPO / name).resolve() and str(cand) not in found:
                    found.append(str(cand))
    return found


def read_config(path: str, options: dict | None = None):
    """Load ``path`` and apply ``options`` (see the module docstring); returns ``(cfg, scope)``."""
    from mmengine.config import Config
    if not osp.isfile(path):
        raise _runtime.ConfigCheckError(f"config file '{path}' does not exist")
    try:
        cfg = Config.fromfile(path)  # imports custom_imports
    except ImportError as e:
        cause = e  # mmengine re-raises a bare "Failed to import X"; the import error with a module name is inside
        while cause is not None and not getattr(cause, 'name', None):
            cause = cause.__cause__ or cause.__context__
        top = (getattr(cause, 'name', None) or '').split('.')[0]
        hidden = hidden_packages((top, )) if top in OUR_PACKAGES else []
        if hidden:
            raise _runtime.ConfigCheckError(
                f"importing the config's custom_imports failed ({cause}): '{top}' is sparsedense's {REPO / top}, "
                f"which hides your {', '.join(hidden)} (two packages cannot share a name); rename yours") from e
        raise
    check_own_packages()
    scope = _runtime.setup_scope(cfg)
    _runtime.check_cfg_options(cfg, options, scope)
    _runtime.apply_cfg_options(cfg, options)
    return cfg, scope
