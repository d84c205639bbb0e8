"""The Triton modules of ``sparse_ops``, imported here and nowhere else by the dispatchers and the fused blocks.

Triton is optional: on a machine without it (a CPU-only install) ``sparse_ops.backend.TRITON_MISSING`` holds the
reason, these names are None, and :func:`sparse_ops.backend.why_not_triton` returns that reason for every op, so
nothing reaches them. With Triton every name is the module itself::

    from sparse_ops.kernels import triton_api       # then triton_api.hilbert_window_attention(...)
"""
from __future__ import annotations

from .backend import TRITON_MISSING

__all__ = ['block_sparse', 'block_sparse_bwd', 'block_sparse_fwd', 'dwconv_triton', 'norm_triton', 'triton_api']

if TRITON_MISSING is None:
    from . import block_sparse, block_sparse_bwd, block_sparse_fwd, dwconv_triton, norm_triton, triton_api
else:
    block_sparse = block_sparse_bwd = block_sparse_fwd = dwconv_triton = norm_triton = triton_api = None
