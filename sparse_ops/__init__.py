"""sparse_ops: sparse local attention for dense prediction (Hilbert windows / band / 1D NA, 2D NA, routing).

Layout legend (one layout everywhere):

- 1D patterns: ``q, k, v: (B, heads, N, D)``, the N = H*W tokens in Hilbert order: token i is the pixel with
  row-major index ``hilbert_order(H, W)[i]`` (``hilbert_coords(H, W)[i]`` is its ``(y, x)``).
- 2D patterns: ``q, k, v: (B, heads, H, W, D)``.
- Output: q's shape and dtype. ``scale`` defaults to ``D ** -0.5``.
- ``rpb``: ``(heads, 2r-1, 2r-1)`` relative position bias indexed by the (clamped) 2D offset key - query.
- ``qkv_attention(qkv, heads, pattern, ...)``: a 1D / 2D pattern on the heads of a fused ``(..., 3C)`` projection,
  heads merged in the output ``(..., C)`` (one autograd node on the Triton path; what the backbones call).
- ``layer_norm``: LayerNorm over the last dim with its output in a chosen dtype (the pre-norms of the backbones).
- ``depthwise_conv2d``: depthwise conv of a channels-last ``(B, H, W, C)`` map (any pixel strides) plus a fused
  residual add (BiFormer's pos-embed and LCE convs).
- ``backend``: ``'triton' | 'torch' | None``; None takes the Triton core on CUDA when ``can_run_triton`` says so,
  else the PyTorch twin (:mod:`sparse_ops.reference`); forcing ``'triton'`` where it cannot run raises ValueError.
- ``clear_caches()``: frees the process-wide pattern / Hilbert-order caches (device memory shared by all models).
"""
from .backend import can_run_triton, choose_backend, use_backend
from .caches import clear_caches
from .dwconv import depthwise_conv2d
from .functional import (bilevel_routing_attention, hilbert_neighborhood_attention_1d, hilbert_slide_attention,
                         hilbert_window_attention, neighborhood_attention_2d)
from .hilbert import hilbert_coords, hilbert_inverse, hilbert_order
from .norm import layer_norm
from .packed import qkv_attention

__all__ = [
    'hilbert_order', 'hilbert_inverse', 'hilbert_coords',
    'hilbert_window_attention', 'hilbert_slide_attention', 'hilbert_neighborhood_attention_1d',
    'neighborhood_attention_2d', 'bilevel_routing_attention', 'qkv_attention',
    'can_run_triton', 'choose_backend', 'use_backend', 'layer_norm', 'depthwise_conv2d', 'clear_caches',
]
