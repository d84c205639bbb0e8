"""Our dense-prediction heads that use `sparse_ops` attention; importing this package registers them in MMEngine's
root MODELS registry, so mmdet and mmseg configs find them (`custom_imports = dict(imports=['heads'])`).

- `SparseContextFPN` (mmdet neck): FPN + routing / Hilbert-window attention context on the stride-4/8 outputs.
- `SparseContextUPerHead` (mmseg decode head): UPerHead + the same context on its fused stride-4 feature.
- `SparseContext`, `SparseContextAttention`: the shared NCHW -> NCHW context block.
"""
from .context_block import SparseContext, SparseContextAttention
from .context_fpn import SparseContextFPN
from .context_uper_head import SparseContextUPerHead

__all__ = ['SparseContext', 'SparseContextAttention', 'SparseContextFPN', 'SparseContextUPerHead']
