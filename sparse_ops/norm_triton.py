"""LayerNorm over the last dimension in Triton, writing its output directly in a lower precision.

Why: under autocast ``F.layer_norm`` runs in fp32 and returns fp32; the ``Linear`` that reads it then casts to
bf16 / fp16, and the backward casts the gradient back: four kernels and two extra passes over a feature map per
norm, plus PyTorch's per-row LayerNorm kernels, which are slow for the narrow rows of a backbone (C = 64..768 over
~10^5 rows: a large share of HWT-T's GPU time per step, docs/benchmarks.md at 167f716, session 3). Here one kernel
normalises fp32 rows and writes ``out_dtype``; the backward is one kernel for dx plus per-program partial sums of
dweight / dbias that one ``sum`` finishes.

Math (as ``torch.nn.functional.layer_norm``, biased variance, fp32 statistics):
``y = (x - mean) * rstd * weight + bias`` with ``rstd = 1 / sqrt(var + eps)``;
``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * weight``, ``xhat = (x - mean) * rstd``;
``dweight = sum_rows dy * xhat``, ``dbias = sum_rows dy``.

Saved for the backward: x, or -- when ``out_dtype`` is narrower than x (fp32 residual stream, bf16 output) --
``xhat`` rounded to ``out_dtype`` (half the bytes; the backward then reads xhat instead of recomputing it).

Shapes: x ``(..., C)`` (any float dtype, last dim contiguous after a reshape); weight, bias ``(C,)`` or None.
Returns y ``(..., C)`` in ``out_dtype`` (default x's dtype).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._host import cdiv, next_pow2

__all__ = ['layer_norm_triton', 'LayerNormFunction']


@triton.jit(do_not_specialize=['M'])   # sizes: not specialised (docs/design.md)
def _ln_fwd_kernel(X, W, B, Y, XHAT, MEAN, RSTD, M, C, eps, stride_x, stride_y,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, SAVE_XHAT: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    r_ok = rows < M
    c_ok = cols < C
    mask = r_ok[:, None] & c_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / C + eps)
    y = xc * rstd[:, None]
    if SAVE_XHAT:
        tl.store(XHAT + rows64[:, None] * C + cols[None, :], y.to(XHAT.dtype.element_ty), mask=mask)
    if HAS_W:
        y = y * tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=r_ok)
    tl.store(RSTD + rows, rstd, mask=r_ok)


@triton.jit(do_not_specialize=['M'])
def _ln_bwd_kernel(X, W, DY, DX, MEAN, RSTD, PART, RES, M, C, stride_x, stride_dy, stride_dx, stride_part,
                   stride_res, HAS_W: tl.constexpr, X_IS_XHAT: tl.constexpr, HAS_RES: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, TILES: tl.constexpr, STAGES: tl.constexpr):
    """Program p handles the ``TILES`` consecutive row tiles from ``p * TILES`` (loads pipelined over ``STAGES``);
    writes dx (plus the rows of RES when ``HAS_RES``: the gradient of a residual stream around the norm) and its
    partial (dweight, dbias) sums to ``PART[0, p]`` / ``PART[1, p]`` (fp32). ``X_IS_XHAT``: X holds the saved
    normalised rows (MEAN unused)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    c_ok = cols < C
    if HAS_W:
        w = tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32)
    else:
        w = tl.where(c_ok, 1.0, 0.0)
    dw = tl.zeros([BLOCK_C], tl.float32)
    db = tl.zeros([BLOCK_C], tl.float32)
    for t in tl.range(0, TILES, num_stages=STAGES):
        rows = (pid * TILES + t) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = rows < M
        mask = r_ok[:, None] & c_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=r_ok, other=0.0)
        if X_IS_XHAT:
            xhat = x
        else:
            mean = tl.load(MEAN + rows, mask=r_ok, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, 1) / C
        c2 = tl.sum(g, 1) / C
        dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if HAS_RES:
            dx += tl.load(RES + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, 0)
        db += tl.sum(dy, 0)
    tl.store(PART + pid * C + cols, dw, mask=c_ok)
    tl.store(PART + stride_part + pid * C + cols, db, mask=c_ok)


def _tiles(c: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) of the forward: ~4K elements per tile."""
    block_c = next_pow2(c)
    block_r = max(1, min(64, 4096 // block_c))
    return block_r, block_c, 8 if block_r * block_c >= 4096 else 4


def _bwd_tiles(c: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_R, BLOCK_C, TILES, STAGES, num_warps) of the backward, two tiles per program: the fastest of a sweep
    of BLOCK_R 8-64, 1-8 tiles per program, 1-3 stages and 4 / 8 warps at C = 64..768 on an H100 (the choices are
    in docs/benchmarks.md)."""
    block_c = next_pow2(c)
    if block_c <= 128:
        return 64, block_c, 2, 2, 4
    if block_c <= 256:
        return 64, block_c, 2, 1, 8
    return max(1, 4096 // block_c), block_c, 2, 2, 4


def layer_norm_fwd(x2: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                   out_dtype: torch.dtype, save_xhat: bool = False) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """x2 ``(M, C)`` with unit column stride -> y ``(M, C)`` out_dtype, mean and rstd ``(M,)`` fp32, and with
    ``save_xhat`` the normalised rows ``(x - mean) * rstd`` ``(M, C)`` in out_dtype (else None)."""
    m, c = x2.shape
    y = torch.empty((m, c), device=x2.device, dtype=out_dtype)
    xhat = torch.empty((m, c), device=x2.device, dtype=out_dtype) if save_xhat else None
    mean = torch.empty(m, device=x2.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if m == 0:
        return y, mean, rstd, xhat
    block_r, block_c, warps = _tiles(c)
    _ln_fwd_kernel[(cdiv(m, block_r),)](
        x2, weight if weight is not None else x2, bias if bias is not None else x2, y,
        xhat if xhat is not None else y, mean, rstd, m, c, eps, x2.stride(0), y.stride(0), HAS_W=weight is not None,
        HAS_B=bias is not None, SAVE_XHAT=save_xhat, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps)
    return y, mean, rstd, xhat


def layer_norm_bwd(dy2: Tensor, x2: Tensor, weight: Optional[Tensor], mean: Optional[Tensor], rstd: Tensor,
                   dx_dtype: Optional[torch.dtype] = None, x_is_xhat: bool = False,
                   residual: Optional[Tensor] = None, out: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """dy2, x2 ``(M, C)`` -> dx ``(M, C)`` (``dx_dtype``, default x2's) and the fp32 sums ``(2, C)``: (dweight,
    dbias). ``x_is_xhat``: x2 is the saved normalised input (``layer_norm_fwd(save_xhat=True)``; ``mean`` may then
    be None: the kernel does not read it). ``residual``
    ``(M, C)`` (unit column stride): added to dx in the kernel (the residual stream's own gradient). ``out``: a
    contiguous ``(M, C)`` buffer of ``dx_dtype`` to write dx into (a CUDA graph's own buffer)."""
    m, c = x2.shape
    dx = out if out is not None else torch.empty((m, c), device=x2.device, dtype=dx_dtype or x2.dtype)
    if m == 0:
        return dx, torch.zeros((2, c), device=x2.device, dtype=torch.float32)
    block_r, block_c, tiles, stages, warps = _bwd_tiles(c)
    n_prog = cdiv(cdiv(m, block_r), tiles)
    part = torch.empty((2, n_prog, c), device=x2.device, dtype=torch.float32)
    _ln_bwd_kernel[(n_prog,)](
        x2, weight if weight is not None else x2, dy2, dx, mean if mean is not None else rstd, rstd, part,
        residual if residual is not None else dy2, m, c, x2.stride(0), dy2.stride(0), dx.stride(0),
        part.stride(0), residual.stride(0) if residual is not None else 0, HAS_W=weight is not None,
        X_IS_XHAT=x_is_xhat, HAS_RES=residual is not None, BLOCK_R=block_r, BLOCK_C=block_c, TILES=tiles,
        STAGES=stages, num_warps=warps)
    return dx, part.sum(1)


def _rows(t: Tensor) -> Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


class LayerNormFunction(torch.autograd.Function):
    """Autograd of :func:`layer_norm_triton`. Saves weight, the fp32 rstd and either x (with the means) or, when the
    output dtype is narrower than x's (an fp32 residual stream normalised for a bf16 / fp16 Linear), the normalised
    rows in the output dtype: half the bytes of x, and a relative error of one rounding (2^-9 in bf16) in the
    backward's ``xhat`` instead of none -- the size of the rounding the incoming bf16 ``dy`` already carries."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        x2 = _rows(x)
        save_xhat = out_dtype.itemsize < x.dtype.itemsize
        y, mean, rstd, xhat = layer_norm_fwd(x2, weight, bias, eps, out_dtype, save_xhat)
        ctx.save_for_backward(xhat if save_xhat else x2, weight, None if save_xhat else mean, rstd)
        ctx.x_shape, ctx.x_dtype, ctx.save_xhat = x.shape, x.dtype, save_xhat
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        dx, sums = layer_norm_bwd(_rows(dy), x2, weight, mean, rstd, ctx.x_dtype,
                                  ctx.save_xhat)
        dw = sums[0].to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = sums[1].to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return dx.view(ctx.x_shape), dw, db, None, None


def layer_norm_triton(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                      out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """Triton LayerNorm over the last dim of x, output in ``out_dtype`` (default x's dtype); differentiable in
    x, weight and bias. Arguments are checked by :func:`sparse_ops.layer_norm`."""
    return LayerNormFunction.apply(x, weight, bias, float(eps), out_dtype or x.dtype)
