"""What the hand-written block nodes share (``biformer_fused``, ``hwt_fused``, ``nat_fused``): whether a call takes
the fused node (``fused_path_applies``), the weights it reads (``low_pair``), the autograd Function's body around a
block's ``forward_math`` / ``backward_math``, and the backward's bookkeeping.

A fused block is a ``torch.autograd.Function`` whose ``apply`` takes ``(x, spec, s1, s2, *weights)``:
x the block's input, ``spec`` a frozen dataclass of its non-tensor arguments, ``s1`` / ``s2`` the residual
branches' factors (``ResidualDropPath.factor``: None, a layer scale ``(C,)`` or a stochastic-depth mask, applied as
``addcmul(x, y, s, value)`` with the spec's ``value1`` / ``value2``) and the weights in the block's own order.
Its ``forward`` / ``backward`` are :func:`fused_forward` / :func:`fused_backward`, given the block's

- ``forward_math(x, spec, s1, s2, weights, need_s1, need_s2, out=None, copy_input=False) -> (out, saved, aux)``:
  ``saved`` the tensors and ``aux`` the rest the backward needs; ``out`` a buffer to write the result into;
  ``copy_input``: save a copy of x where the backward keeps x itself;
- ``backward_math(spec, need, saved, aux, dout, dx_out=None) -> grads``: one gradient per tensor argument of
  ``apply`` (None where ``need`` is False), the input gradient written into ``dx_out`` if given.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmengine.logging import print_log

from sparse_ops.backend import requested_backend

__all__ = ['fused_path_applies', 'low_pair', 'cached_spec', 'fused_forward', 'fused_backward', 'GradSink', 'residual',
           'branch_grad', 'factor_grad', 'norm_out', 'mlp_backward', 'column_sums', 'BIAS_MATMUL_ROWS']


def fused_path_applies(block, x: torch.Tensor, qkv, backend: str | None, what: str, key: tuple,
                       triton_runs: Callable[..., bool], *args) -> bool:
    """Whether ``block`` runs this call as its fused node: not compiling, x in fp32 or the matmuls' dtype, the Linear
    weights (``qkv``'s) in the dtype the matmuls run in (under autocast: pre-cast by ``cast_linear_weights``, per
    backbone or, with ``with_cp``, per block), fewer than 2**31 qkv elements per sample, and
    ``triton_runs(x, low, backend, *args)``: the pattern's Triton path, as ``sparse_ops.choose_backend`` decides it
    (``backend``, or the ``sparse_ops.use_backend`` default for the op ``what``: CUDA when None, CPU only when
    'triton'; where Triton cannot run, ``sparse_ops.backend.why_not_triton`` says why). The answer is cached on the
    block per (shape, dtypes, device, backend, autocast, ``key``) and logged at DEBUG level when first decided
    (mmengine's current logger: ``log_level='DEBUG'`` in a config shows which path each block takes)."""
    if torch.compiler.is_compiling():
        return False
    backend = requested_backend(backend, what)
    low = (qkv._low[0] if qkv._low is not None else qkv.weight).dtype
    autocast = torch.is_autocast_enabled(x.device.type)
    full_key = (x.shape, x.dtype, low, x.device, backend, autocast, key)
    cache = block.__dict__.setdefault('_fused_cache', {})
    if full_key not in cache:
        if len(cache) >= 1024:                 # many input sizes (multi-scale training): keep the dict bounded
            cache.clear()
        want = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        cache[full_key] = fused = (low == want and x.dtype in (torch.float32, low) and x[0].numel() * 3 < 2 ** 31
                                   and triton_runs(x, low, backend, *args))
        print_log(f'{type(block).__name__} {tuple(x.shape)} {x.dtype}, weights {low}, backend {backend}, autocast '
                  f'{autocast}: ' + ('fused node' if fused else 'module composition'), logger='current',
                  level=logging.DEBUG)
    return cache[full_key]


def low_pair(module) -> tuple:
    """``(weight, bias)`` of a ``Linear`` / ``Conv2d``: the pre-cast low-precision pair where
    ``cast_linear_weights`` set one, else the parameters."""
    low = getattr(module, '_low', None)
    return low if low is not None else (module.weight, module.bias)


def cached_spec(block, key: tuple, build: Callable[[], Any]):
    """The block's spec for ``key`` (its non-tensor arguments that vary per call: map size, branch values), built
    by ``build()`` the first time and cached on the block."""
    cache = block.__dict__.setdefault('_fused_specs', {})
    spec = cache.get(key)
    if spec is None:
        if len(cache) >= 1024:                 # many input sizes: keep the dict bounded
            cache.clear()
        spec = cache[key] = build()
    return spec


def fused_forward(ctx, x: torch.Tensor, spec, s1, s2, params: tuple, backward_math: Callable,
                  forward_math: Callable) -> torch.Tensor:
    """The Function's forward: ``forward_math`` on x and the weights ``params``, what the backward needs saved on
    ``ctx``."""
    need = ctx.needs_input_grad
    if not x.is_contiguous():                   # e.g. a downsampler's NCHW map seen channels-last
        x = x.contiguous()
    out, saved, aux = forward_math(x, spec, s1, s2, params, s1 is not None and need[2], s2 is not None and need[3])
    ctx.save_for_backward(*saved)
    ctx.spec, ctx.aux, ctx.backward_math = spec, aux, backward_math
    return out


def fused_backward(ctx, dout: torch.Tensor) -> tuple:
    """The Function's backward: ``backward_math`` on the saved tensors, one gradient per argument of ``apply``."""
    return tuple(ctx.backward_math(ctx.spec, ctx.needs_input_grad, ctx.saved_tensors, ctx.aux, dout))


BIAS_MATMUL_ROWS = 16384
"""On CUDA, bias gradients of at least this many rows are a matmul with a ones vector, faster than ``sum(0)`` there
and slower below (measured at BiFormer-S's stage-1 rows: docs/benchmarks.md at 167f716, session 13)."""


def column_sums(dy: torch.Tensor) -> torch.Tensor:
    """``dy.sum(0)`` of ``(M, N)`` rows, in dy's dtype with fp32 accumulation (:data:`BIAS_MATMUL_ROWS`)."""
    if dy.is_cuda and dy.shape[0] >= BIAS_MATMUL_ROWS:
        return torch.ones(dy.shape[0], device=dy.device, dtype=dy.dtype) @ dy
    return dy.sum(0)


class GradSink:
    """The gradients of a hand-written backward, one slot per tensor argument of ``apply``, filled only where
    ``need`` says so. ``bias_dtypes``: ``{slot: dtype}`` of the biases that exist; ``save_xhat``: the norms kept
    their normalised rows (else the rows and their means)."""

    def __init__(self, need, bias_dtypes: dict, save_xhat: bool) -> None:
        self.need, self.bias_dtypes, self.save_xhat = need, bias_dtypes, save_xhat
        self.grads = [None] * len(need)

    def linear(self, dy: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, w_at: int, b_at: int):
        """``F.linear(inp, weight, bias)`` with output gradient dy ``(M, out)``: the weight and bias gradients
        into slots ``w_at`` / ``b_at``; returns the input gradient ``(M, in)``."""
        if self.need[w_at]:
            self.grads[w_at] = dy.t() @ inp
        if self.need[b_at] and b_at in self.bias_dtypes:
            self.grads[b_at] = column_sums(dy)
        return dy @ weight

    def norm(self, kernels, dy, x_or_xhat, weight, mean, rstd, w_at: int, residual_grad: torch.Tensor, out=None):
        """A LayerNorm's backward (``kernels``: ``sparse_ops.norm_triton``) on ``(M, C)`` rows, with the residual
        stream's gradient added in the kernel: its weight and bias gradients into slots ``w_at``, ``w_at + 1``;
        returns the input gradient shaped like ``residual_grad`` (written into ``out`` when given)."""
        m, c = x_or_xhat.shape
        dx, sums = kernels.layer_norm_bwd(dy, x_or_xhat, weight, mean, rstd, residual_grad.dtype, self.save_xhat,
                                          residual_grad.view(m, c), None if out is None else out.view(m, c))
        if self.need[w_at]:
            self.grads[w_at] = sums[0].to(weight.dtype)
        if self.need[w_at + 1] and w_at + 1 in self.bias_dtypes:
            self.grads[w_at + 1] = sums[1].to(self.bias_dtypes[w_at + 1])
        return dx.view(residual_grad.shape)


def residual(x: torch.Tensor, y: torch.Tensor, s, value: float, out=None) -> torch.Tensor:
    """``x + y`` or ``addcmul(x, y, s, value)`` (into ``out`` when given)."""
    if s is None:
        return x + y if out is None else torch.add(x, y, out=out)
    return torch.addcmul(x, y, s, value=value) if out is None else torch.addcmul(x, y, s, value=value, out=out)


def branch_grad(t: torch.Tensor, s, value: float) -> torch.Tensor:
    """Gradient of ``addcmul(x, y, s, value)`` with respect to y, given t, the gradient of the sum."""
    return t if s is None else t * s * value if value != 1.0 else t * s


def factor_grad(t: torch.Tensor, y: torch.Tensor, s: torch.Tensor, value: float) -> torch.Tensor:
    """Gradient of ``addcmul(x, y, s, value)`` with respect to s (summed to s's shape)."""
    return (t * y * value).sum_to_size(s.shape)


def norm_out(x_or_xhat, mean, rstd, weight, bias, low: torch.dtype, save_xhat: bool) -> torch.Tensor:
    """A norm's output ``(M, C)`` in ``low``, recomputed from what its backward keeps: the normalised rows
    (``save_xhat``, in ``low``) or the rows with their fp32 mean and rstd. Keeping it instead costs two bytes per
    token and channel."""
    xhat = x_or_xhat if save_xhat else (x_or_xhat - mean[:, None]) * rstd[:, None]
    out = xhat * weight if bias is None else torch.addcmul(bias, xhat, weight)
    return out.to(low)


def mlp_backward(sink: GradSink, dout: torch.Tensor, mlp, s2, value2: float, u: torch.Tensor, fc1_w, fc2_w,
                 ln_out: torch.Tensor, fc1_at: int, fc2_at: int) -> torch.Tensor:
    """The MLP branch ``out = x2 + s2 * fc2(gelu(fc1(ln2(x2))))`` back to the gradient of ln2's output ``(M, C)``:
    s2's gradient into slot 3, fc1's and fc2's weight gradients into slots ``fc1_at`` / ``fc2_at`` and their bias
    gradients into the slots after them. ``mlp``: the branch's output ``(..., C)`` (None unless s2 needs a
    gradient); ``u``: fc1's output ``(M, hidden)`` (GELU is recomputed from it); ``ln_out``: ln2's output
    ``(M, C)`` in the matmuls' dtype."""
    if s2 is not None and sink.need[3]:
        sink.grads[3] = factor_grad(dout, mlp, s2, value2)
    dmlp = branch_grad(dout, s2, value2).to(fc2_w.dtype).view(ln_out.shape)
    dg = sink.linear(dmlp, F.gelu(u), fc2_w, fc2_at, fc2_at + 1)
    du = torch.ops.aten.gelu_backward(dg, u)
    return sink.linear(du, ln_out, fc1_w, fc1_at, fc1_at + 1)
