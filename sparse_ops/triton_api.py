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
import torch.nn.functional as F

from . import patterns
from .block_sparse import block_sparse_attention, packed_block_sparse_attention, split_heads
from .block_sparse_fwd import Config, default_config
from .routing_triton import route_topk_triton

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


def _region_sums(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """x ``(B, H, W, *C)`` (any strides, no copy) -> ``(B, n_win**2, prod(C))`` fp32 sums over each region's real
    tokens (one fp32-accumulating reduction; the zero padding of ragged maps adds nothing)."""
    b, hh, ww = x.shape[:3]
    rh, rw = -(-hh // n_win), -(-ww // n_win)
    pad_h, pad_w = n_win * rh - hh, n_win * rw - ww
    if pad_h or pad_w:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad_w, 0, pad_h))
    sums = x.reshape(b, n_win, rh, n_win, rw, *x.shape[3:]).sum(dim=(2, 4), dtype=torch.float32)
    return sums.reshape(b, n_win * n_win, -1)


def _region_divisor(counts) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``counts (R,)`` or a :class:`~sparse_ops.patterns.RoutingLayout` (its cached tensors: two kernels less) ->
    the divisor of the region means ``(R, 1)`` fp32 and the empty-region mask ``(R,)`` (None: none is empty)."""
    if isinstance(counts, patterns.RoutingLayout):
        return counts.cnt, counts.empty
    return counts.clamp(min=1).to(torch.float32)[:, None], counts == 0


@torch.no_grad()
def _topk_regions(q_mean: torch.Tensor, k_mean: torch.Tensor, empty: Optional[torch.Tensor],
                  topk: int) -> torch.Tensor:
    """Region means ``(B, R, C)`` fp32 -> top-``topk`` key regions per query region ``(B, R, topk)`` by their
    affinity, empty regions (``empty (R,)`` bool, or None) excluded."""
    # autocast would run this matmul in bf16/fp16: near-ties then round to exact ties and the top-k flips between
    # equally valid runs (regression test: tests/sparse_ops/test_routing_regression.py)
    with torch.autocast(q_mean.device.type, enabled=False):
        affinity = q_mean @ k_mean.transpose(-1, -2)
    if empty is not None:
        affinity = affinity.masked_fill(empty[None, None, :], float('-inf'))
    return affinity.topk(topk, dim=-1, sorted=False).indices      # a set: the tables do not depend on the order


@torch.no_grad()
def route_topk(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, counts: torch.Tensor) -> torch.Tensor:
    """BiFormer routing, as ``reference.routing.route_regions`` but with one fp32-accumulating read of q and k.

    q, k ``(B, heads, H, W, D)``; counts ``(R,)`` real tokens per region (or the ``RoutingLayout``). Region means
    over real tokens with heads concatenated ``(B, R, heads*D)``, affinity ``q_r @ k_r^T`` in fp32 (autocast
    disabled), empty regions -inf, top-k. Returns ``(B, R, topk)``.
    """
    def cl(x):  # (B, heads, H, W, D) -> (B, H, W, heads, D) view: sums come out with heads concatenated head-major
        return x.permute(0, 2, 3, 1, 4)
    cnt, empty = _region_divisor(counts)
    return _topk_regions(_region_sums(cl(q), n_win) / cnt, _region_sums(cl(k), n_win) / cnt, empty, topk)


def routing_config(q_shape, device, n_win: int) -> Config:
    """Default tiles of routed regions for q ``(B, heads, H, W, D)``: :func:`default_config` given the tokens of
    the largest region, ``ceil(H / n_win) * ceil(W / n_win)`` (16 x 16 tiles for small regions on the GPU)."""
    region_tokens = -(-q_shape[2] // n_win) * -(-q_shape[3] // n_win)
    return default_config(q_shape[-1], device, patterns.MASK_ROUTE, region_tokens)


def _routing_plan(q_shape, device, n_win, topk, route, config):
    """(pattern, config) of routed regions; ``route(layout) -> (B, R, topk)`` picks the regions."""
    cfg = config if config is not None else routing_config(q_shape, device, n_win)
    layout = patterns.routing_layout(q_shape[2], q_shape[3], n_win, cfg.block_m, cfg.block_n, device)
    return patterns.routing_pattern(layout, route(layout)), cfg


def bilevel_routing_attention(q, k, v, n_win, topk, scale=None, *, config: Optional[Config] = None):
    """BiFormer bi-level routing attention; q, k, v ``(B, heads, H, W, D)``.

    Routing (:func:`route_topk`: detached fp32 region means, top-k) runs in PyTorch; the block tables are built from
    its result on the device with no host sync; the kernels read the tokens in region order in place.
    """
    p, cfg = _routing_plan(q.shape, q.device, n_win, topk, lambda c: route_topk(q, k, n_win, topk, c), config)
    # BiFormer's scale makes attention flat: fp32 O keeps the backward's rowsum(dO * O) exact (block_sparse.py)
    o = block_sparse_attention(_flat(q), _flat(k), _flat(v), p, scale, None, cfg, o_fp32=q.dtype != torch.float32)
    return o.view(q.shape)


@torch.no_grad()
def route_topk_qkv(qkv: torch.Tensor, n_win: int, topk: int, counts: torch.Tensor) -> torch.Tensor:
    """:func:`route_topk` from a fused ``qkv (B, H, W, 3C)``: the region sums of q and k are one reduction of
    ``qkv[..., :2C]`` (heads concatenated head-major is qkv's own channel order), their means one division.
    Returns ``(B, R, topk)``."""
    c = qkv.shape[-1] // 3
    cnt, empty = _region_divisor(counts)
    means = _region_sums(qkv[..., :2 * c], n_win) / cnt
    return _topk_regions(means[..., :c], means[..., c:], empty, topk)


def routing_qkv_plan(qkv: torch.Tensor, num_heads: int, n_win: int, topk: int,
                     config: Optional[Config] = None) -> tuple[patterns.BlockPattern, Config]:
    """(pattern, config) of BiFormer routing on the heads of ``qkv (B, H, W, 3C)``: the routes of
    :func:`route_topk_qkv` in two launches (``routing_triton.route_topk_triton``: region means, affinity + top-k +
    route rows), then the block tables on the device (no host sync). Arguments already checked by the caller."""
    b, hh, ww, c3 = qkv.shape
    cfg = config if config is not None else routing_config((b, num_heads, hh, ww, c3 // (3 * num_heads)),
                                                           qkv.device, n_win)
    layout = patterns.routing_layout(hh, ww, n_win, cfg.block_m, cfg.block_n, qkv.device)
    return patterns.routing_pattern(layout, *route_topk_triton(qkv, n_win, topk)), cfg


def _routing_qkv(qkv, num_heads, n_win, topk, scale=None, *, config: Optional[Config] = None):
    """Routing on the heads of ``qkv (B, H, W, 3C)`` (:func:`routing_qkv_plan`), then the packed kernels.
    Returns ``(B, H, W, C)``."""
    p, cfg = routing_qkv_plan(qkv, num_heads, n_win, topk, config)
    return packed_block_sparse_attention(qkv, num_heads, p, scale, None, cfg, o_fp32=qkv.dtype != torch.float32)
