"""Depthwise 2D convolution on channels-last maps (Triton), forward and backward, with a fused residual add.

Design note
-----------
Why: BiFormer runs two depthwise convs per block on channels-last maps (a 3x3 position embedding added to the
residual stream, a 5x5 "LCE" on V, a channel slice of the fused qkv projection). PyTorch's depthwise kernels on
NCHW views of those maps need layout copies and spend most of their time in grad-weight. Here one memory-bound
kernel per direction reads the map in place, whatever its pixel strides.

Math (as ``F.conv2d(groups=C, padding=k // 2)``, a cross-correlation, ``P = k // 2``):
``y[b, h, w, c] = sum_{i, j} wt[c, i, j] * x[b, h + i - P, w + j - P, c] + bias[c] + residual[b, h, w, c]``;
``dx[b, h, w, c] = sum_{i, j} wt[c, i, j] * dy[b, h - i + P, w - j + P, c]`` (the same sum on dy, taps mirrored);
``dwt[c, i, j] = sum_{b, h, w} dy[b, h, w, c] * x[b, h + i - P, w + j - P, c]``; ``dbias[c] = sum dy[..., c]``;
``dresidual = dy``. All sums in fp32.

Algorithm and grid:
- ``_dwconv_fwd_kernel``: program ``(tile, cblk)`` owns a ``TILE_H x TILE_W`` pixel tile of one image and
  ``BLOCK_C`` channels; for each of the k*k taps (``tl.static_range``) it loads the shifted tile with border masks
  (zero padding) and the tap's weights ``[BLOCK_C]``, and accumulates in fp32; then adds bias and residual and
  stores ``out_dtype``. Neighbouring taps hit the same cache lines: DRAM sees each input about once. With
  ``FLIP`` the taps are mirrored: the same kernel computes dx from dy.
- ``_dwconv_dw_kernel`` (dweight, dbias): program ``(p, cblk)`` walks a contiguous run of pixel groups (``PIX``
  pixels of one row each); per group it gathers the ``[PIX, TAPS_PAD, BLOCK_C]`` patch of x around the group (tap
  ``t = i*k + j`` at offset ``(i - P, j - P)``; row ``k*k`` is set to 1 for dbias) and adds ``dy[:, None, :] *
  patch`` to an fp32 accumulator of that shape: no reduction inside the loop. At the end it sums the PIX axis and
  writes ``PART[p] (k*k + 1, C)``; one ``sum(0)`` on the host finishes dweight / dbias deterministically (no
  atomics). ``Config.programs_per_sm`` bounds the number of programs, hence the partial buffer.

Measured against ``nn.Conv2d`` under autocast on the NCHW view plus the residual add (kernel time of forward +
backward at BiFormer-S's shapes, k3 and k5, docs/benchmarks.md at 167f716, session 7): faster at every shape
tried. A first version fused dx into the dweight pass (one read of dy less) with a cross-warp ``tl.sum`` per tap
and tile and 2 persistent programs per SM: slower than cuDNN.

Layout: x, residual, dy ``(B, H, W, C)`` with channel stride 1 and any other strides (``stride_xb, stride_xh,
stride_xw``); y and dx are written contiguous ``(B, H, W, C)``. weight ``(C, 1, k, k)`` read through its strides.
Batch base offsets are int64; offsets inside one image are int32 (the dispatcher requires them < 2**31).

Limits: odd k (any; unrolled k*k times); fp16 / bf16 / fp32 inputs, fp32 accumulation; H, W, C >= 1. Saved for the
backward: x as given (no copy) and weight. Both kernels are still well above the DRAM bound: every tap re-reads its
shifted tile from L1 / L2 and recomputes its addresses and masks; the tile defaults were not tuned (``Config``; the
benchmark's ``--sweep`` times the alternatives).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._host import cdiv, next_pow2

__all__ = ['Config', 'default_config', 'dwconv_fwd', 'dwconv_dw', 'weight_grads', 'DepthwiseConv2dFunction',
           'depthwise_conv2d_nhwc']


# ----------------------------------------------------------------------------------------------------------------
# tile configuration (data): one heuristic default; the tests and the benchmark may pass others
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    tile_h: int                 # forward / dx: pixel tile of a program
    tile_w: int
    block_c: int                # channels of a program (both kernels)
    num_warps: int = 4
    dw_elems: int = 4096        # dweight: PIX * TAPS_PAD * block_c accumulator elements (PIX pixels per step)
    dw_warps: int = 4
    programs_per_sm: int = 4    # dweight: programs per SM (bounds the partial-sum buffer)

    def __str__(self):
        return (f'{self.tile_h}x{self.tile_w}-c{self.block_c}-w{self.num_warps}'
                f'-dw{self.dw_elems}w{self.dw_warps}p{self.programs_per_sm}')


@functools.lru_cache(maxsize=256)
def default_config(h: int, w: int, c: int) -> Config:
    """(Cached.) About 4K elements per tile: ``BLOCK_C = min(64, next_pow2(C))`` channels (>= 16), 8 x 8 pixels at
    C >= 64, wider tiles for fewer channels; tiles never exceed the map's (power-of-2-rounded) size."""
    block_c = min(64, max(16, next_pow2(c)))
    pixels = 4096 // block_c
    tile_w = min(next_pow2(w), 8 if pixels <= 64 else 16)
    tile_h = min(next_pow2(h), max(1, pixels // tile_w))
    return Config(tile_h, tile_w, block_c, num_warps=4 if tile_h * tile_w * block_c <= 4096 else 8)


# ----------------------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _tile_coords(tile, n_th, n_tw, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Tile index -> (b, h [P], w [P]) with P = TILE_H * TILE_W pixels in row-major order inside the tile."""
    tw = tile % n_tw
    rest = tile // n_tw
    th = rest % n_th
    b = rest // n_th
    p = tl.arange(0, TILE_H * TILE_W)
    return b, th * TILE_H + p // TILE_W, tw * TILE_W + p % TILE_W


@triton.jit
def _load_shifted(base, h, w, dh, dw, H, W, c, c_ok, stride_h, stride_w):
    """``base[h + dh, w + dw, c]`` as fp32 ``[P, BLOCK_C]``; 0 outside the map (zero padding) and for c >= C."""
    hh = h + dh
    ww = w + dw
    ok = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    ptr = base + (hh * stride_h + ww * stride_w)[:, None] + c[None, :]
    return tl.load(ptr, mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=['H', 'W', 'n_th', 'n_tw'])   # sizes: not specialised (docs/design.md)
def _dwconv_fwd_kernel(X, WT, BIAS, R, Y, H, W, C, n_th, n_tw,
                       stride_xb, stride_xh, stride_xw, stride_wc, stride_wh, stride_ww,
                       stride_rb, stride_rh, stride_rw,
                       K: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                       TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """Y[b, h, w, c] = sum_taps WT[c, i, j] * X[b, h +- (i - P), w +- (j - P), c] (+ BIAS[c]) (+ R[b, h, w, c]);
    '-' with FLIP (dx from dy). Y contiguous (B, H, W, C)."""
    tl.static_assert(K % 2 == 1, 'depthwise conv: odd kernel size only')
    PAD: tl.constexpr = K // 2
    SIGN: tl.constexpr = -1 if FLIP else 1
    b, h, w = _tile_coords(tl.program_id(0), n_th, n_tw, TILE_H, TILE_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    b64 = b.to(tl.int64)
    xb = X + b64 * stride_xb
    acc = tl.zeros([TILE_H * TILE_W, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            wv = tl.load(WT + c * stride_wc + i * stride_wh + j * stride_ww, mask=c_ok, other=0.0).to(tl.float32)
            xv = _load_shifted(xb, h, w, SIGN * (i - PAD), SIGN * (j - PAD), H, W, c, c_ok, stride_xh, stride_xw)
            acc += xv * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    mask = ((h < H) & (w < W))[:, None] & c_ok[None, :]
    if HAS_RES:
        r_ptr = R + b64 * stride_rb + (h * stride_rh + w * stride_rw)[:, None] + c[None, :]
        acc += tl.load(r_ptr, mask=mask, other=0.0).to(tl.float32)
    y_ptr = Y + b64 * H * W * C + ((h * W + w) * C)[:, None] + c[None, :]
    tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=['H', 'W', 'n_wg', 'n_groups', 'groups_per_prog'])
def _dwconv_dw_kernel(X, DY, PART, H, W, C, n_wg, n_groups, groups_per_prog,
                      stride_xb, stride_xh, stride_xw, stride_gb, stride_gh, stride_gw, stride_pp,
                      K: tl.constexpr, TAPS_PAD: tl.constexpr, PIX: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (p, cblk) walks the pixel groups [p * groups_per_prog, (p + 1) * groups_per_prog) (a group: PIX
    consecutive pixels of one row) and writes PART[p, t, c] = sum_pixels DY[pixel, c] * X[pixel + offset(t), c] for
    the taps t < K*K and PART[p, K*K, c] = sum_pixels DY[pixel, c] (fp32)."""
    tl.static_assert(K % 2 == 1, 'depthwise conv: odd kernel size only')
    tl.static_assert(TAPS_PAD >= K * K + 1, 'TAPS_PAD must hold the k*k taps and the bias row')
    PAD: tl.constexpr = K // 2
    pid = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    t = tl.arange(0, TAPS_PAD)
    di = t // K - PAD                      # tap t = i * K + j reads x[h + i - PAD, w + j - PAD]
    dj = t % K - PAD
    is_tap = t < K * K
    is_bias = t == K * K
    p = tl.arange(0, PIX)
    acc = tl.zeros([PIX, TAPS_PAD, BLOCK_C], dtype=tl.float32)
    g0 = pid * groups_per_prog
    for grp in range(g0, tl.minimum(g0 + groups_per_prog, n_groups)):
        wg = grp % n_wg
        rest = grp // n_wg
        h = rest % H
        b64 = (rest // H).to(tl.int64)
        w = wg * PIX + p                                                        # [PIX]
        w_ok = w < W
        g_ptr = DY + b64 * stride_gb + h * stride_gh + (w * stride_gw)[:, None] + c[None, :]
        g = tl.load(g_ptr, mask=w_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)   # [PIX, BLOCK_C]
        hh = h + di                                                             # [TAPS]
        ww = w[:, None] + dj[None, :]                                           # [PIX, TAPS]
        ok = (is_tap & (hh >= 0) & (hh < H))[None, :] & (ww >= 0) & (ww < W)
        x_ptr = X + b64 * stride_xb + (hh[None, :] * stride_xh + ww * stride_xw)[:, :, None] + c[None, None, :]
        xv = tl.load(x_ptr, mask=ok[:, :, None] & c_ok[None, None, :], other=0.0).to(tl.float32)
        xv = tl.where(is_bias[None, :, None], 1.0, xv)                          # row K*K: dbias
        acc += g[:, None, :] * xv
    part = tl.sum(acc, 0)                                                       # [TAPS, BLOCK_C]
    p_ptr = PART + pid * stride_pp + t[:, None] * C + c[None, :]
    tl.store(p_ptr, part, mask=(t < K * K + 1)[:, None] & c_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------
_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != 'cuda':
        return 2   # interpreter: a few programs, so that each walks several pixel groups
    if device.index not in _SM_COUNT:
        _SM_COUNT[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SM_COUNT[device.index]


def _grid_dims(x: Tensor, cfg: Config) -> tuple[int, int, int]:
    """(n_th, n_tw, n_cblk) of a ``(B, H, W, C)`` map."""
    _, h, w, c = x.shape
    return cdiv(h, cfg.tile_h), cdiv(w, cfg.tile_w), cdiv(c, cfg.block_c)


def dwconv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
               out_dtype: Optional[torch.dtype] = None, flip: bool = False,
               config: Optional[Config] = None, out: Optional[Tensor] = None) -> Tensor:
    """x ``(B, H, W, C)`` (channel stride 1), weight ``(C, 1, k, k)``, bias ``(C,)`` / None, residual
    ``(B, H, W, C)`` / None -> y contiguous ``(B, H, W, C)`` in ``out_dtype`` (default x's dtype), written into
    ``out`` when given (contiguous, that shape and dtype). ``flip`` mirrors the taps (dx of the conv from dy)."""
    bsz, h, w, c = x.shape
    k = weight.shape[-1]
    y = torch.empty((bsz, h, w, c), device=x.device, dtype=out_dtype or x.dtype) if out is None else out
    if y.numel() == 0:
        return y
    cfg = config or default_config(h, w, c)
    n_th, n_tw, n_cblk = _grid_dims(x, cfg)
    bias = bias.contiguous() if bias is not None else None
    r_strides = residual.stride()[:3] if residual is not None else (0, 0, 0)
    _dwconv_fwd_kernel[(bsz * n_th * n_tw, n_cblk)](
        x, weight, bias if bias is not None else weight, residual if residual is not None else x, y, h, w, c,
        n_th, n_tw, *x.stride()[:3], weight.stride(0), weight.stride(2), weight.stride(3), *r_strides,
        K=k, FLIP=flip, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        TILE_H=cfg.tile_h, TILE_W=cfg.tile_w, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    return y


def dwconv_dw(dy: Tensor, x: Tensor, k: int, config: Optional[Config] = None) -> Tensor:
    """dy, x ``(B, H, W, C)`` (channel stride 1, any pixel strides) -> the fp32 sums ``(k*k + 1, C)``: row
    ``i*k + j`` is dweight[:, 0, i, j] of a k x k depthwise conv, the last row dbias."""
    bsz, h, w, c = x.shape
    if x.numel() == 0:
        return torch.zeros((k * k + 1, c), device=x.device, dtype=torch.float32)
    cfg = config or default_config(h, w, c)
    taps_pad = next_pow2(k * k + 1)
    pix = min(next_pow2(w), max(1, cfg.dw_elems // (taps_pad * cfg.block_c)))
    n_cblk = cdiv(c, cfg.block_c)
    n_wg = cdiv(w, pix)
    n_groups = bsz * h * n_wg
    per_prog = cdiv(n_groups, max(1, cdiv(cfg.programs_per_sm * _sm_count(x.device), n_cblk)))
    n_prog = cdiv(n_groups, per_prog)
    part = torch.empty((n_prog, k * k + 1, c), device=x.device, dtype=torch.float32)
    _dwconv_dw_kernel[(n_prog, n_cblk)](
        x, dy, part, h, w, c, n_wg, n_groups, per_prog, *x.stride()[:3], *dy.stride()[:3], part.stride(0),
        K=k, TAPS_PAD=taps_pad, PIX=pix, BLOCK_C=cfg.block_c, num_warps=cfg.dw_warps)
    return part.sum(0)


def weight_grads(sums: Tensor, k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`dwconv_dw`'s sums ``(k*k + 1, C)`` -> (dweight ``(C, 1, k, k)``, dbias ``(C,)``) in ``dtype``: one
    cast, the two results views of it (dweight strided: no transposing copy)."""
    low = sums.to(dtype)
    c = low.shape[1]
    return low.as_strided((c, 1, k, k), (1, k * k * c, k * c, c)), low[k * k]


# ----------------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------------
class DepthwiseConv2dFunction(torch.autograd.Function):
    """Autograd of :func:`depthwise_conv2d_nhwc`. Saves x (the view as given) and weight. Backward: dx with the
    forward kernel on dy with mirrored taps, dweight and dbias with one partial-sum kernel (each only when
    needed); dresidual is dy itself (cast only when the residual's dtype differs)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, out_dtype, config):
        y = dwconv_fwd(x, weight, bias, residual, out_dtype, config=config)
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.res_dtype = residual.dtype if residual is not None else None
        ctx.config = config
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_dx, need_dw, need_db, need_dr = ctx.needs_input_grad[:4]
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        dx = dw = db = dr = None
        if need_dx:
            dx = dwconv_fwd(dy, weight, out_dtype=x.dtype, flip=True, config=ctx.config)
        if need_dw or need_db:
            k = weight.shape[-1]
            sums = dwconv_dw(dy, x, k, ctx.config)
            dw_all, db_all = weight_grads(sums, k, weight.dtype)
            dw = dw_all if need_dw else None
            if need_db:
                db = db_all if ctx.bias_dtype == weight.dtype else sums[k * k].to(ctx.bias_dtype)
        if need_dr:
            dr = dy if dy.dtype == ctx.res_dtype else dy.to(ctx.res_dtype)
        return dx, dw, db, dr, None, None


def depthwise_conv2d_nhwc(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                          residual: Optional[Tensor] = None, out_dtype: Optional[torch.dtype] = None,
                          config: Optional[Config] = None) -> Tensor:
    """Triton depthwise conv of x ``(B, H, W, C)`` with weight ``(C, 1, k, k)`` (+ bias ``(C,)``, + residual
    ``(B, H, W, C)``), fp32 math, output ``(B, H, W, C)`` in ``out_dtype`` (default residual's dtype, else x's);
    the contract of :mod:`sparse_ops.reference.dwconv`. Arguments are checked by :func:`sparse_ops.depthwise_conv2d`;
    ``config`` overrides the tile heuristic (tests, benchmarks)."""
    if out_dtype is None:
        out_dtype = residual.dtype if residual is not None else x.dtype
    return DepthwiseConv2dFunction.apply(x, weight, bias, residual, out_dtype, config)
