"""sparsedense backbones; importing this package registers every backbone in MMEngine's root ``MODELS`` and the
``ConvertedPretrained`` weight initializer in ``WEIGHT_INITIALIZERS``.

Each module registers one type: ``HWT`` (hwt), ``HNT`` (hnt), ``BiFormer`` (biformer), ``NAT`` (nat),
``DiNAT`` (dinat). Stock mmdet / mmseg configs take them with
``custom_imports = dict(imports=['backbones'], allow_failed_imports=False)``.
"""
from .base import SparseBackbone
from .converters import init as _converters_init  # noqa: F401  registers ConvertedPretrained
from .biformer import BiFormer
from .dinat import DiNAT
from .hnt import HNT
from .hwt import HWT
from .nat import NAT

__all__ = ['SparseBackbone', 'HWT', 'HNT', 'BiFormer', 'NAT', 'DiNAT']
