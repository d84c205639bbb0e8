"""``Linear`` / ``Conv2d``: ``nn.Linear`` / ``nn.Conv2d`` whose low-precision weights are cast for a whole backbone
in one go.

Under autocast every ``nn.Linear`` (and every conv) casts its fp32 weight and bias to bf16 / fp16 on each call, and
the backward casts their gradients back: two kernels per tensor and step (~200 launches for HWT-T, ~480 for NAT-T,
about a sixth of a backbone step, which at feature-map sizes is bound by launches, not by the GPU; BiFormer's two
depthwise convs per block add ~240 more). ``cast_linear_weights(module)`` casts the weights and biases of every
``Linear`` and ``Conv2d`` below ``module`` with one concatenation and one cast (backward: one concatenation of the
gradients and one cast) and lets each layer use its slice while the block runs. The cast is one autograd node
(``_CastParams``) whose outputs are views of one low-precision buffer, kept on the module from step to step (the
same addresses every step, which CUDA-graphed blocks read in place; rewritten each forward with the current
values, so a graph kept past an optimizer step sees the new weights where plain autograd would raise): flattening with
``reshape / cat / split / view`` instead put ~200 view nodes per step into the backward of HWT-T. Outside the
block, with autocast off or already low-precision weights, and under ``torch.compile`` (Inductor fuses the casts
itself), the layers are exactly ``nn.Linear`` / ``nn.Conv2d``. Same values as autocast's own cast (round to nearest).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._nn import flatten_dense_tensors, unflatten_dense_tensors

__all__ = ['Linear', 'Conv2d', 'cast_linear_weights']


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names); inside ``cast_linear_weights`` it uses the pre-cast weights."""

    _low: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._low is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, *self._low)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and names); inside ``cast_linear_weights`` it uses the pre-cast weights."""

    _low: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._low is None:
            return self._conv_forward(x, self.weight, self.bias)
        return self._conv_forward(x, *self._low)


def _cast(tensors, dtype: torch.dtype, buffers: dict | None = None, key: object = None) -> tuple[torch.Tensor, ...]:
    """``tensors`` cast to ``dtype`` as views of one buffer: one concatenation and one cast. With ``buffers``, the
    buffer is ``buffers[key]``, kept from call to call (same address every step: CUDA-graphed blocks read the
    weights in place), rewritten each call without bumping its version counter (so a second forward before a
    backward, which rewrites the same values, leaves the first one's saved views valid)."""
    flat = flatten_dense_tensors(tensors)
    if buffers is None:
        return tuple(unflatten_dense_tensors(flat.to(dtype), tensors))
    buf = buffers.get(key)
    if buf is None or buf.numel() != flat.numel() or buf.dtype != dtype or buf.device != flat.device:
        buf = buffers[key] = torch.empty(flat.numel(), dtype=dtype, device=flat.device)
    buf.data.copy_(flat)
    return tuple(unflatten_dense_tensors(buf, tensors))


class _CastParams(torch.autograd.Function):
    """``(dtype, buffers, key, *params)`` -> the params cast to ``dtype``, as views of one buffer (one
    concatenation + one cast; ``_cast``). Backward: the gradients concatenated (zeros for unused outputs), cast to
    the params' dtype in one kernel and handed back as views of that buffer."""

    @staticmethod
    def forward(ctx, dtype, buffers, key, *params):
        ctx.shapes, ctx.dtype = [p.shape for p in params], params[0].dtype
        return _cast(params, dtype, buffers, key)

    @staticmethod
    def backward(ctx, *grads):
        if not any(ctx.needs_input_grad[3:]):
            return (None,) * (len(grads) + 3)
        like = next(g for g in grads if g is not None)
        grads = [g if g is not None else torch.zeros(shape, dtype=like.dtype, device=like.device)
                 for g, shape in zip(grads, ctx.shapes)]
        cast = _cast(grads, ctx.dtype)
        return (None,) * 3 + tuple(g if need else None for g, need in zip(cast, ctx.needs_input_grad[3:]))


def _linears(module: nn.Module) -> tuple[Linear | Conv2d, ...]:
    """The ``Linear`` and ``Conv2d`` layers below ``module``, collected at the first call (walking ~200 modules
    each forward is host time; a built backbone does not change its layers)."""
    found = module.__dict__.get('_cast_linears')
    if found is None:
        found = module.__dict__['_cast_linears'] = tuple(m for m in module.modules() if isinstance(m, (Linear, Conv2d)))
    return found


@contextlib.contextmanager
def cast_linear_weights(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block every ``Linear`` and ``Conv2d`` below ``module`` computes with its weight and bias in
    autocast's dtype, cast together in two kernels (see the module docstring); nothing happens when autocast is off
    for the weights' device, when they already have that dtype, under ``torch.compile``, or with ``enabled=False``."""
    linears = _linears(module)
    if not enabled or not linears or torch.compiler.is_compiling():
        yield
        return
    weight = linears[0].weight
    device_type = weight.device.type
    if not torch.is_autocast_enabled(device_type) or weight.dtype == torch.get_autocast_dtype(device_type):
        yield
        return
    low = torch.get_autocast_dtype(device_type)
    params = [t for m in linears for t in (m.weight, m.bias) if t is not None]
    buffers = module.__dict__.setdefault('_cast_buffers', {})
    if all(p.requires_grad for p in params) or not torch.is_grad_enabled():
        pieces = iter(_CastParams.apply(low, buffers, 'all', *params))
    else:   # frozen layers: cast outside autograd, so their weight gradients are not computed and thrown away
        trainable = [p for p in params if p.requires_grad]
        cast = dict(zip(map(id, trainable), _CastParams.apply(low, buffers, 'trainable', *trainable))) \
            if trainable else {}
        frozen = [p for p in params if not p.requires_grad]
        with torch.no_grad():
            cast.update(zip(map(id, frozen), _cast(frozen, low, buffers, 'frozen')))
        pieces = iter([cast[id(p)] for p in params])
    for m in linears:     # the instance dict directly: nn.Module.__setattr__ is slow, and this runs 2 x 250 per step
        m.__dict__['_low'] = (next(pieces), next(pieces) if m.bias is not None else None)
    try:
        yield
    finally:
        for m in linears:
            m.__dict__['_low'] = None
