"""Our dense-prediction heads that use `sparse_ops` attention; importing this package registers them in MMEngine's
root MODELS registry, so mmdet and mmseg configs find them (`custom_imports = dict(imports=['heads'])`).

- `SparseContextFPN` (mmdet neck): FPN + routing / Hilbert-window attention context on the stride-4/8 outputs.
- `SparseContextUPerHead` (mmseg decode head): UPerHead + the same context on its fused stride-4 feature.
- `SparseContext`, `SparseContextAttention`: the shared NCHW -> NCHW context block.

Configs import ``['backbones', 'heads']``: if the ``backbones`` imported before us is not ours (a folder of the same
name first on ``sys.path``), one warning names it; mmengine would only say that HWT is not in the registry.
"""
import sys as _sys
import warnings as _warnings
from pathlib import Path as _Path

from .context_block import SparseContext, SparseContextAttention
from .context_fpn import SparseContextFPN
from .context_uper_head import SparseContextUPerHead

__all__ = ['SparseContext', 'SparseContextAttention', 'SparseContextFPN', 'SparseContextUPerHead']


def _folder(module) -> _Path:
    """The folder a package was imported from (a namespace package, without __init__.py, has no __file__)."""
    file = getattr(module, '__file__', None)
    return _Path(file).resolve().parent if file else _Path(next(iter(getattr(module, '__path__', [])), '?')).resolve()


_backbones = _sys.modules.get('backbones')
_ours = _Path(__file__).resolve().parents[1] / 'backbones'
if _backbones is not None and _folder(_backbones) != _ours:
    _warnings.warn(f"'backbones' was imported from {_folder(_backbones)}, not sparsedense's {_ours}: a package of "
                   'yours with that name comes first on sys.path; rename it if your config uses HWT / HNT / BiFormer / '
                   'NAT / DiNAT', stacklevel=2)
