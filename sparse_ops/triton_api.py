"""Triton implementations of the five public attention functions (same semantics as ``sparse_ops.reference``).

Each function builds (or fetches from cache) a :class:`~sparse_ops.patterns.BlockPattern` for the input size and the
kernel config and calls the one block-sparse core :func:`~sparse_ops.block_sparse.block_sparse_attention`. 2D
patterns run on a sequence order of their own (sub-grid-major Hilbert order for 2D NA, region order for routing);
the kernels read the row-major inputs in place through the pattern's ``rows`` permutation and write the output in
row-major order, so there is no permuted copy of q, k, v or o, and never a top-k gathered copy.

Shapes: 1D functions take q, k, v ``(B, heads, N, D)`` (N in Hilbert order), 2D functions ``(B, heads, H, W, D)``;
outputs have q's shape and dtype. Every function takes a keyword-only ``config`` (a
:class:`~sparse_ops.block_sparse_fwd.Config`, default :func:`~sparse_ops.block_sparse_fwd.default_config`), used by
the tests to run every config and by the benchmark to tune.

Whether these functions can run given inputs is :func:`sparse_ops.backend.why_not_triton`'s to say (the public
functions ask it before calling here).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import patterns, routing
from .block_sparse import block_sparse_attention, packed_block_sparse_attention, split_heads
from .block_sparse_fwd import Config, default_config

__all__ = ['hilbert_window_attention', 'hilbert_slide_attention', 'hilbert_neighborhood_attention_1d',
           'neighborhood_attention_2d', 'bilevel_routing_attention', 'qkv_attention', 'routing_qkv_plan']


def _config(q: torch.Tensor, config: Optional[Config], mask_mode: int) -> Config:
    return config if config is not None else default_config(q.shape[-1], q.device, mask_mode)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, H, W, D) -> (B, heads, H*W, D), a view when possible; the kernels read it through the
    pattern's ``rows`` permutation, so no permuted copy is made."""
    b, h, hh, ww, d = x.shape
    return x.reshape(b, h, hh * ww, d)


def _window_plan(q, window, shift=False, scale=None, *, rpb=None, hw=None, config=None):
    cfg = _config(q, config, patterns.MASK_INTERVAL)
    return patterns.hilbert_window_pattern(q.shape[2], window, shift, cfg.block_m, cfg.block_n, q.device,
                                           hw=hw if rpb is not None else None), cfg, scale, rpb


def _slide_plan(q, window, scale=None, *, rpb=None, hw=None, config=None):
    cfg = _config(q, config, patterns.MASK_INTERVAL)
    return patterns.hilbert_slide_pattern(q.shape[2], window, cfg.block_m, cfg.block_n, q.device,
                                          hw=hw if rpb is not None else None), cfg, scale, rpb


def _na1d_plan(q, kernel, scale=None, *, rpb=None, hw=None, config=None):
    cfg = _config(q, config, patterns.MASK_INTERVAL)
    return patterns.hilbert_na1d_pattern(q.shape[2], kernel, cfg.block_m, cfg.block_n, q.device,
                                         hw=hw if rpb is not None else None), cfg, scale, rpb


def _na2d_plan(q, kernel_size, dilation=1, rpb=None, scale=None, *, config=None):
    cfg = _config(q, config, patterns.MASK_GRID2D)
    return patterns.na2d_pattern(q.shape[2], q.shape[3], kernel_size, dilation, cfg.block_m, cfg.block_n,
                                 q.device), cfg, scale, rpb


# pattern name -> the plan (pattern, config, scale, rpb) of the function that takes (q, k, v, *args, **kwargs)
_PLANS = {'window': _window_plan, 'slide': _slide_plan, 'na1d': _na1d_plan, 'na2d': _na2d_plan}


def hilbert_window_attention(q, k, v, window, shift=False, scale=None, *, rpb=None, hw=None,
                             config: Optional[Config] = None):
    """Hilbert window attention (chunks of ``window`` tokens; ``shift``: boundaries at
    ``window - window//2 + m*window``).

    q, k, v ``(B, heads, N, D)``; ``rpb (heads, 2r-1, 2r-1)`` needs ``hw=(H, W)``, ``H*W == N``.
    """
    p, cfg, scale, rpb = _window_plan(q, window, shift, scale, rpb=rpb, hw=hw, config=config)
    return block_sparse_attention(q, k, v, p, scale, rpb, cfg)


def hilbert_slide_attention(q, k, v, window, scale=None, *, rpb=None, hw=None, config: Optional[Config] = None):
    """Band attention ``|i - j| <= window // 2`` on the Hilbert sequence; shapes as the window function."""
    p, cfg, scale, rpb = _slide_plan(q, window, scale, rpb=rpb, hw=hw, config=config)
    return block_sparse_attention(q, k, v, p, scale, rpb, cfg)


def hilbert_neighborhood_attention_1d(q, k, v, kernel, scale=None, *, rpb=None, hw=None,
                                      config: Optional[Config] = None):
    """Clamped 1D neighbourhood attention (exactly ``min(kernel, N)`` keys); shapes as the window function."""
    p, cfg, scale, rpb = _na1d_plan(q, kernel, scale, rpb=rpb, hw=hw, config=config)
    return block_sparse_attention(q, k, v, p, scale, rpb, cfg)


def neighborhood_attention_2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None, *,
                              config: Optional[Config] = None):
    """Exact 2D (dilated) neighbourhood attention, computed in sub-grid-major Hilbert order.

    q, k, v ``(B, heads, H, W, D)``; ``rpb (heads, 2k-1, 2k-1)`` indexed by offsets in sub-grid units.
    """
    p, cfg, scale, rpb = _na2d_plan(q, kernel_size, dilation, rpb, scale, config=config)
    o = block_sparse_attention(_flat(q), _flat(k), _flat(v), p, scale, rpb, cfg)
    return o.view(q.shape)


def qkv_attention(qkv, num_heads, pattern, *args, config: Optional[Config] = None, q_like=None, **kwargs):
    """:func:`sparse_ops.qkv_attention` on the Triton path (arguments already checked by the caller).

    qkv ``(B, *S, 3C)`` contiguous (``S = (N,)`` for 1D patterns, ``(H, W)`` for 'na2d' / 'routing'); ``*args,
    **kwargs``: the pattern function's arguments after q, k, v; ``q_like``: any tensor of q's shape
    ``(B, heads, *S, D)``, device and dtype (the caller's, to skip making one). Returns ``(B, *S, C)`` (heads
    merged), a view of the output.
    """
    if pattern == 'routing':
        return _routing_qkv(qkv, num_heads, *args, config=config, **kwargs)
    plan = _PLANS[pattern]
    if q_like is None:
        q_like = split_heads(qkv.detach(), num_heads)[0].unflatten(2, qkv.shape[1:-1])
    p, cfg, scale, rpb = plan(q_like, *args, config=config, **kwargs)
    return packed_block_sparse_attention(qkv, num_heads, p, scale, rpb, cfg)


def routing_config(q_shape, device, n_win: int) -> Config:
    """Default tiles of routed regions for q ``(B, heads, H, W, D)``: :func:`default_config` given the tokens of
    the largest region, ``ceil(H / n_win) * ceil(W / n_win)`` (16 x 16 tiles for small regions on the GPU)."""
    ry, rx = routing.region_size(q_shape[2], q_shape[3], n_win)
    region_tokens = ry * rx
    return default_config(q_shape[-1], device, patterns.MASK_ROUTE, region_tokens)


def _routing_plan(q_shape, device, n_win, topk, route, config):
    """(pattern, config) of routed regions; ``route(layout) -> topk_idx`` or ``(topk_idx, route matrix, bit rows)``
    picks the regions (``sparse_ops.routing``)."""
    cfg = config if config is not None else routing_config(q_shape, device, n_win)
    layout = routing.routing_layout(q_shape[2], q_shape[3], n_win, cfg.block_m, cfg.block_n, device)
    routes = route(layout)
    return routing.routing_pattern(layout, *(routes if isinstance(routes, tuple) else (routes,))), cfg


def bilevel_routing_attention(q, k, v, n_win, topk, scale=None, *, config: Optional[Config] = None):
    """BiFormer bi-level routing attention; q, k, v ``(B, heads, H, W, D)``.

    Routing (``routing.route_regions``: detached fp32 region means, affinity, the top-k rule) runs in PyTorch; the
    block tables are built from its result on the device with no host sync; the kernels read the tokens in region
    order in place.
    """
    p, cfg = _routing_plan(q.shape, q.device, n_win, topk,
                           lambda layout: routing.route_regions(q, k, n_win, topk, layout), config)
    # BiFormer's scale makes attention flat: fp32 O keeps the backward's rowsum(dO * O) exact (block_sparse.py)
    o = block_sparse_attention(_flat(q), _flat(k), _flat(v), p, scale, None, cfg, o_fp32=q.dtype != torch.float32)
    return o.view(q.shape)


def routing_qkv_plan(qkv: torch.Tensor, num_heads: int, n_win: int, topk: int,
                     config: Optional[Config] = None) -> tuple[patterns.BlockPattern, Config]:
    """(pattern, config) of BiFormer routing on the heads of ``qkv (B, H, W, 3C)``: the routes of
    ``routing.route_qkv`` (two Triton launches: region means, affinity + top-k + route and bit rows), then the block
    tables on the device (no host sync). Arguments already checked by the caller; ``n_win`` / ``topk`` are clamped to
    the map (``routing.clamp_routing``)."""
    b, hh, ww, c3 = qkv.shape
    n_win, topk = routing.clamp_routing(n_win, topk, hh, ww)
    return _routing_plan((b, num_heads, hh, ww, c3 // (3 * num_heads)), qkv.device, n_win, topk,
                         lambda layout: routing.route_qkv(qkv, n_win, topk), config)


def _routing_qkv(qkv, num_heads, n_win, topk, scale=None, *, config: Optional[Config] = None):
    """Routing on the heads of ``qkv (B, H, W, 3C)`` (:func:`routing_qkv_plan`), then the packed kernels.
    Returns ``(B, H, W, C)``."""
    p, cfg = routing_qkv_plan(qkv, num_heads, n_win, topk, config)
    return packed_block_sparse_attention(qkv, num_heads, p, scale, None, cfg, o_fp32=qkv.dtype != torch.float32)
