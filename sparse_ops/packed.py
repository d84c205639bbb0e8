"""``qkv_attention``: a 1D / 2D attention function on the heads of a fused qkv projection, heads merged again.

Patterns: the 1D Hilbert functions ('window', 'slide', 'na1d'), 2D neighbourhoods ('na2d') and BiFormer's routed
regions ('routing'; there the region means for the routing are one reduction of ``qkv[..., :2C]``).

What every backbone block does around its attention: ``qkv = Linear(C, 3C)(x)``, split into heads, attend, merge
the heads for the output projection. Split and merge are views, but autograd records them (a split node, its
stacked gradient copied into qkv's layout, a merge node) and at feature-map sizes a backbone step is bound by such
host work. On the Triton path ``qkv_attention`` is ONE autograd node
(:class:`sparse_ops.block_sparse.BlockSparseAttention`, packed layout): the kernels read q, k, v in place from qkv,
write the output in the merged layout and the gradient of qkv as one buffer. On the twin path it is the split, the
PyTorch twin and the merge. Same values as calling the public function on the split heads.
"""
from __future__ import annotations

import torch

from . import reference
from .functional import _resolve_na1d, _resolve_na2d, _resolve_routing, _resolve_slide, _resolve_window
from .kernels import triton_api
from .reference._common import check_positive_int, split_heads

__all__ = ['qkv_attention', 'QKV_PATTERNS']

# pattern -> (argument resolution of its public function, the function's name, number of spatial dims)
_PATTERNS = {
    'window': (_resolve_window, 'hilbert_window_attention', 1),
    'slide': (_resolve_slide, 'hilbert_slide_attention', 1),
    'na1d': (_resolve_na1d, 'hilbert_neighborhood_attention_1d', 1),
    'na2d': (_resolve_na2d, 'neighborhood_attention_2d', 2),
    'routing': (_resolve_routing, 'bilevel_routing_attention', 2),
}
QKV_PATTERNS = tuple(_PATTERNS)


def _heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, ...]:
    """q, k, v ``(B, heads, *S, D)`` views of ``qkv (B, *S, 3C)`` (contiguous)."""
    spatial = qkv.shape[1:-1]
    return tuple(t.unflatten(2, spatial) if len(spatial) > 1 else t for t in split_heads(qkv, num_heads))


def _query_view(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The q of ``_heads`` as one detached view (what the argument checks and the pattern builders look at)."""
    b, *spatial, c3 = qkv.shape
    d = c3 // (3 * num_heads)
    strides, step = [], c3
    for size in reversed(spatial):
        strides.insert(0, step)
        step = step * size            # not *=: under jit tracing the sizes are tensors
    return qkv.detach().as_strided((b, num_heads, *spatial, d), (step, d, *strides, 1))


def qkv_attention(qkv, num_heads, pattern, *args, backend=None, **kwargs):
    """``pattern`` ('window' | 'slide' | 'na1d' | 'na2d' | 'routing') attention on the heads of a fused qkv projection.

    qkv: ``(B, N, 3C)`` for the 1D patterns (the N tokens in Hilbert order), ``(B, H, W, 3C)`` for 'na2d' and
    'routing'; channels ``[q | k | v]``, each head-major ``(heads, D)`` (``Linear(C, 3C)`` in the timm / Swin / NAT
    / BiFormer layout).
    ``*args, **kwargs``: what the pattern's public function takes after q, k, v (e.g. ``'window', 49, shift=True,
    rpb=table, hw=(H, W)``; ``'na2d', 7, dilation=2, rpb=table``; ``'routing', n_win, topk, scale``),
    ``backend`` as there.
    Returns ``(B, N, C)`` / ``(B, H, W, C)`` in qkv's dtype: that function's output with the heads merged
    (channel ``h * D + d``), which is what the output projection reads.
    NaN / inf in a head's q, k or v row: NaN exactly in that head's output rows of the queries that attend the token
    (``sparse_ops.functional``'s rule; routing's region choice is shared by the heads).
    """
    name = 'qkv_attention'
    if pattern not in _PATTERNS:
        raise ValueError(f'{name}: pattern must be one of {QKV_PATTERNS}, got {pattern!r}')
    resolve, fn_name, spatial_dims = _PATTERNS[pattern]
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f'{name}: qkv must be a torch.Tensor, got {type(qkv).__name__}')
    num_heads = check_positive_int(num_heads, 'num_heads', name)
    layout = '(B, N, 3C)' if spatial_dims == 1 else '(B, H, W, 3C)'
    if qkv.dim() != spatial_dims + 2:
        raise ValueError(f'{name}: pattern {pattern!r} needs qkv {layout}, got qkv.shape={tuple(qkv.shape)}')
    if qkv.shape[-1] == 0 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f'{name}: the last dim of qkv must be 3 * num_heads * head_dim with num_heads={num_heads}, '
                         f'got qkv.shape={tuple(qkv.shape)}')
    qkv = qkv.contiguous()
    q = _query_view(qkv, num_heads)
    chosen, args, kwargs = resolve(q, q, q, *args, backend=backend, **kwargs)
    if qkv.shape[0] == 0:  # batch 0: an empty (B, *S, C) output, connected to qkv
        return qkv.narrow(-1, 0, qkv.shape[-1] // 3) * 0
    if chosen == 'triton':
        return triton_api.qkv_attention(qkv, num_heads, pattern, *args, q_like=q, **kwargs)
    out = getattr(reference, fn_name)(*_heads(qkv, num_heads), *args, **kwargs)   # (B, heads, *S, D)
    return out.movedim(1, -2).flatten(-2)
