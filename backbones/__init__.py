"""sparsedense backbones; importing this package registers every backbone in MMEngine's root ``MODELS``.

Each module registers one type: ``HWT`` (hwt), ``HNT`` (hnt), ``BiFormer`` (biformer), ``NAT`` (nat),
``DiNAT`` (dinat).
"""
import importlib as _importlib
import importlib.util as _importlib_util

from .base import SparseBackbone
from .hwt import HWT

# TEMPORARY while the other backbones are being written concurrently: import those that exist.
# The lead replaces this with plain imports of hnt, biformer, nat, dinat.
for _name in ('hnt', 'biformer', 'nat', 'dinat'):
    if _importlib_util.find_spec(f'{__name__}.{_name}') is not None:
        _importlib.import_module(f'{__name__}.{_name}')

__all__ = ['SparseBackbone', 'HWT']
