"""What the hand-written block nodes share (``biformer_fused``, ``hwt_fused``, ``nat_fused``): whether a call takes
the fused node (``fused_path_applies``), the weights it reads by name (``linear_weights``), the autograd Function's
body around a block's ``forward_math`` / ``backward_math``, the ops of ``block_math`` on the kernels that every
family shares (``KernelOps``), and the backward's bookkeeping (``GradSink``).

A fused block is a ``torch.autograd.Function`` with a class attribute ``weight_names``, the names of its weights
(the block's parameter paths: ``'norm1.weight'``, ``'attn.qkv.bias'``, ...). :func:`fused_apply` calls it with the
weights given by name, ``apply(x, spec, s1, s2, *weights)`` in ``weight_names`` order (the one place where names
become positions): x the block's input, ``spec`` a frozen dataclass of its non-tensor arguments, ``s1`` / ``s2`` the
residual branches' factors (``ResidualDropPath.factor``: None, a layer scale ``(C,)`` or a stochastic-depth mask,
applied as ``addcmul(x, y, s, value)`` with the spec's ``value1`` / ``value2``). Its ``forward`` / ``backward`` are
:func:`fused_forward` / :func:`fused_backward`, given the block's

- ``forward_math(x, spec, s1, s2, w, need) -> (out, saved, aux)``: the block's ``block_math`` function on its
  ``KernelOps``; ``w`` the weights ``{name: tensor or None}``, ``need`` which arguments want a gradient
  (``{'x' | 's1' | 's2' | weight name: bool}``); ``saved`` the tensors ``{name: tensor or None}`` and ``aux`` the
  rest the backward needs, as the ops recorded them;
- ``backward_math(spec, sink, w, saved, aux, dout)``: fills ``sink`` (a :class:`GradSink`) with the gradients by
  name.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmengine.logging import print_log

from sparse_ops.backend import requested_backend

__all__ = ['fused_path_applies', 'low_pair', 'linear_weights', 'norm_eps', 'cached_spec', 'fused_apply',
           'fused_forward', 'fused_backward', 'KernelOps', 'saved_norm', 'GradSink', 'residual', 'branch_grad',
           'factor_grad', 'norm_out', 'mlp_backward', 'branches_backward', 'column_sums', 'BIAS_MATMUL_ROWS']


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


def linear_weights(module, name: str) -> dict:
    """``{name + '.weight': w, name + '.bias': b}`` of the ``Linear`` / ``Conv2d`` ``module`` (``b`` None without
    a bias): its :func:`low_pair`."""
    weight, bias = low_pair(module)
    return {name + '.weight': weight, name + '.bias': bias}


def norm_eps(block) -> tuple:
    """``(('norm1', eps), ('norm2', eps))`` of the block's two norms: a spec's ``eps`` (:class:`KernelOps`)."""
    return ('norm1', block.norm1.eps), ('norm2', block.norm2.eps)


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


def fused_apply(function, x: torch.Tensor, spec, s1, s2, weights: dict) -> torch.Tensor:
    """``function.apply`` with the weights ``{name: tensor or None}`` passed in ``function.weight_names`` order."""
    return function.apply(x, spec, s1, s2, *[weights[name] for name in function.weight_names])


def fused_forward(ctx, function, x: torch.Tensor, spec, s1, s2, weights: tuple) -> torch.Tensor:
    """The forward of ``function`` (a fused block Function): its ``forward_math`` on x and the ``weights`` (in
    ``function.weight_names`` order), what the backward needs saved on ``ctx``."""
    names = function.weight_names
    need = dict(zip(('x', 'spec', 's1', 's2', *names), ctx.needs_input_grad))
    need['s1'] &= s1 is not None
    need['s2'] &= s2 is not None
    if not x.is_contiguous():                   # e.g. a downsampler's NCHW map seen channels-last
        x = x.contiguous()
    w = dict(zip(names, weights))
    out, saved, aux = function.forward_math(x, spec, s1, s2, w, need)
    ctx.save_for_backward(*saved.values(), *weights)
    ctx.saved_names, ctx.function, ctx.spec, ctx.aux, ctx.need = tuple(saved), function, spec, aux, need
    return out


def fused_backward(ctx, dout: torch.Tensor) -> tuple:
    """The Function's backward: its ``backward_math`` on the saved tensors, one gradient per argument of
    ``apply`` (by name: ``'x'``, ``'s1'``, ``'s2'``, then ``weight_names``)."""
    tensors = ctx.saved_tensors
    k = len(ctx.saved_names)
    saved, w = dict(zip(ctx.saved_names, tensors[:k])), dict(zip(ctx.function.weight_names, tensors[k:]))
    sink = GradSink(ctx.need, w)
    ctx.function.backward_math(ctx.spec, sink, w, saved, ctx.aux, dout.contiguous())
    grads = sink.grads
    return (grads.get('x'), None, grads.get('s1'), grads.get('s2'),
            *[grads.get(name) for name in ctx.function.weight_names])


class KernelOps:
    """The ``ops`` of ``block_math`` for a fused node's forward, on the Triton kernels (the shared ones; each
    family's subclass adds ``attention`` and, for BiFormer, ``conv_add``). Every op records by name in ``saved``
    (tensors) and ``aux`` (the rest) what the family's hand-written backward needs.

    ``w``: the weights by name; ``s1``, ``s2`` and ``spec.value1`` / ``value2``: the residual branches' factors and
    values; ``spec.eps``: ``((norm name, eps), ...)``; ``need``: which arguments want a gradient; x the block's
    input (fp32 residual stream, or the low dtype itself). Matmuls and the attention run in the dtype of the
    Linear weights (``low``); with ``low`` narrower than x the norms keep their normalised rows (``save_xhat``),
    else the rows and their means. Shapes: the ops keep x's ``(B, ..., C)`` shape."""

    def __init__(self, spec, w: dict, s1, s2, need: dict, x: torch.Tensor, norm_kernels) -> None:
        self.spec, self.w, self.need, self.norm_kernels = spec, w, need, norm_kernels
        self.factors = (None, (s1, spec.value1), (s2, spec.value2))
        self.eps = dict(spec.eps)
        self.low = w['attn.qkv.weight'].dtype
        self.save_xhat = self.low.itemsize < x.dtype.itemsize
        self.saved, self.aux = {'s1': s1, 's2': s2}, {}

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Saves ``name.x`` (xhat or x), ``name.mean`` (None with xhat) and ``name.rstd`` ``(M,)``; the output
        ``(..., C)`` in ``low`` is not kept (``norm_out`` recomputes it)."""
        c = x.shape[-1]
        y, mean, rstd, xhat = self.norm_kernels.layer_norm_fwd(
            x.view(-1, c), self.w[name + '.weight'], self.w[name + '.bias'], self.eps[name], self.low,
            self.save_xhat)
        self.saved.update({name + '.x': xhat if self.save_xhat else x.view(-1, c),
                           name + '.mean': None if self.save_xhat else mean, name + '.rstd': rstd})
        return y.view(x.shape)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Saves nothing: the backward has the input (a norm's recomputed output, the attention's O)."""
        return F.linear(x, self.w[name + '.weight'], self.w[name + '.bias'])

    def residual(self, i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Saves ``branch{i}`` (y) where ``s{i}`` needs a gradient."""
        s, value = self.factors[i]
        self.saved[f'branch{i}'] = y if self.need[f's{i}'] else None
        return residual(x, y, s, value)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """Saves ``mlp.fc1`` (fc1's output; the backward recomputes GELU from it)."""
        u = self.saved['mlp.fc1'] = self.linear('mlp.fc1', x)
        return self.linear('mlp.fc2', F.gelu(u))


def saved_norm(saved: dict, name: str) -> tuple:
    """``(x or xhat, mean or None, rstd)`` that :meth:`KernelOps.norm` saved for the norm ``name`` (what
    ``GradSink.norm`` and ``norm_out`` take)."""
    return saved[name + '.x'], saved[name + '.mean'], saved[name + '.rstd']


BIAS_MATMUL_ROWS = 16384
"""On CUDA, bias gradients of at least this many rows are a matmul with a ones vector, faster than ``sum(0)`` there
and slower below (measured at BiFormer-S's stage-1 rows: docs/benchmarks.md at 167f716, session 13)."""


def column_sums(dy: torch.Tensor) -> torch.Tensor:
    """``dy.sum(0)`` of ``(M, N)`` rows, in dy's dtype with fp32 accumulation (:data:`BIAS_MATMUL_ROWS`)."""
    if dy.is_cuda and dy.shape[0] >= BIAS_MATMUL_ROWS:
        return torch.ones(dy.shape[0], device=dy.device, dtype=dy.dtype) @ dy
    return dy.sum(0)


class GradSink:
    """The gradients of a hand-written backward by name (``'x'``, ``'s1'``, ``'s2'``, the weights'), each kept only
    where ``need[name]`` says so. ``w``: the weights ``{name: tensor or None}`` (their dtypes, and which biases
    exist)."""

    def __init__(self, need: dict, w: dict) -> None:
        self.need, self.w, self.grads = need, w, {}

    def put(self, name: str, compute: Callable[[], torch.Tensor]) -> None:
        """``grads[name] = compute()`` where ``name`` needs a gradient (``compute`` is not called otherwise)."""
        if self.need[name]:
            self.grads[name] = compute()

    def linear(self, dy: torch.Tensor, inp: torch.Tensor, name: str) -> torch.Tensor:
        """``F.linear(inp, w[name.weight], w[name.bias])`` with output gradient dy ``(M, out)``: its weight and bias
        gradients by name; returns the input gradient ``(M, in)``."""
        weight, bias = name + '.weight', name + '.bias'
        if self.need[weight]:
            self.grads[weight] = dy.t() @ inp
        if self.need[bias] and self.w[bias] is not None:
            self.grads[bias] = column_sums(dy)
        return dy @ self.w[weight]

    def norm(self, kernels, dy: torch.Tensor, ln: tuple, name: str, residual_grad: torch.Tensor) -> torch.Tensor:
        """The backward of the LayerNorm ``name`` (``kernels``: ``sparse_ops.norm_triton``) on ``(M, C)`` rows
        from ``ln = (x or xhat, mean or None, rstd)``, with the residual stream's gradient added in the kernel:
        its weight and bias gradients by name; returns the input gradient shaped like ``residual_grad``."""
        x_or_xhat, mean, rstd = ln
        m, c = x_or_xhat.shape
        weight, bias = self.w[name + '.weight'], self.w[name + '.bias']
        dx, sums = kernels.layer_norm_bwd(dy, x_or_xhat, weight, mean, rstd, residual_grad.dtype, mean is None,
                                          residual_grad.view(m, c))
        if self.need[name + '.weight']:
            self.grads[name + '.weight'] = sums[0].to(weight.dtype)
        if bias is not None and self.need[name + '.bias']:
            self.grads[name + '.bias'] = sums[1].to(bias.dtype)
        return dx.view(residual_grad.shape)

    def conv(self, kernels, dy: torch.Tensor, inp: torch.Tensor, name: str) -> None:
        """The weight and bias gradients by name of the depthwise conv ``name`` (``kernels``:
        ``sparse_ops.dwconv_triton``) with input ``inp`` and output gradient dy ``(B, H, W, C)``."""
        weight, bias = self.w[name + '.weight'], self.w[name + '.bias']
        need_bias = bias is not None and self.need[name + '.bias']
        if self.need[name + '.weight'] or need_bias:
            k = weight.shape[-1]
            dweight, dbias = kernels.weight_grads(kernels.dwconv_dw(dy, inp, k), k, weight.dtype)
            if self.need[name + '.weight']:
                self.grads[name + '.weight'] = dweight
            if need_bias:
                self.grads[name + '.bias'] = dbias.to(bias.dtype)


def residual(x: torch.Tensor, y: torch.Tensor, s, value: float) -> torch.Tensor:
    """``x + y`` or ``addcmul(x, y, s, value)``."""
    return x + y if s is None else torch.addcmul(x, y, s, value=value)


def branch_grad(t: torch.Tensor, s, value: float) -> torch.Tensor:
    """Gradient of ``addcmul(x, y, s, value)`` with respect to y, given t, the gradient of the sum."""
    return t if s is None else t * s * value if value != 1.0 else t * s


def factor_grad(t: torch.Tensor, y: torch.Tensor, s: torch.Tensor, value: float) -> torch.Tensor:
    """Gradient of ``addcmul(x, y, s, value)`` with respect to s (summed to s's shape)."""
    return (t * y * value).sum_to_size(s.shape)


def norm_out(ln: tuple, weight, bias, low: torch.dtype) -> torch.Tensor:
    """A norm's output ``(M, C)`` in ``low``, recomputed from what its backward keeps, ``ln = (x or xhat, mean or
    None, rstd)``: the normalised rows (mean None, in ``low``) or the rows with their fp32 mean and rstd. Keeping the
    output instead costs two bytes per token and channel."""
    x_or_xhat, mean, rstd = ln
    xhat = x_or_xhat if mean is None else (x_or_xhat - mean[:, None]) * rstd[:, None]
    out = xhat * weight if bias is None else torch.addcmul(bias, xhat, weight)
    return out.to(low)


def mlp_backward(sink: GradSink, dout: torch.Tensor, s2, value2: float, mlp, u: torch.Tensor,
                 ln_out: torch.Tensor) -> torch.Tensor:
    """The MLP branch ``out = x2 + s2 * mlp.fc2(gelu(mlp.fc1(ln2(x2))))`` back to the gradient of ln2's output
    ``(M, C)``: the gradients of ``s2`` and of ``mlp.fc1`` / ``mlp.fc2``'s weights and biases into ``sink``.
    ``mlp``: the branch's output ``(..., C)`` (None unless s2 needs a gradient); ``u``: fc1's output
    ``(..., hidden)`` (GELU is recomputed from it); ``ln_out``: ln2's output ``(M, C)`` in the matmuls' dtype."""
    u = u.view(-1, u.shape[-1])
    sink.put('s2', lambda: factor_grad(dout, mlp, s2, value2))
    dmlp = branch_grad(dout, s2, value2).to(sink.w['mlp.fc2.weight'].dtype).view(ln_out.shape)
    dg = sink.linear(dmlp, F.gelu(u), 'mlp.fc2')
    du = torch.ops.aten.gelu_backward(dg, u)
    return sink.linear(du, ln_out, 'mlp.fc1')


def branches_backward(norm_kernels, sink: GradSink, spec, w: dict, saved: dict, dout: torch.Tensor,
                      low: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """What every family's backward shares, from ``dout`` (like x) back through ``x2 + s2 * mlp(norm2(x2))`` and
    the attention branch's residual ``x2 = x1 + s1 * y``: ``(dx2, dy)``, dx2 the residual stream's gradient at x2
    (like x) and dy y's ``(M, C)`` in ``low``; the gradients of ``s1``, ``s2``, norm2 and the MLP into ``sink``."""
    ln2 = saved_norm(saved, 'norm2')
    ln2_out = norm_out(ln2, w['norm2.weight'], w['norm2.bias'], low)
    dy2 = mlp_backward(sink, dout, saved['s2'], spec.value2, saved['branch2'], saved['mlp.fc1'], ln2_out)
    dx2 = sink.norm(norm_kernels, dy2, ln2, 'norm2', dout)
    s1 = saved['s1']
    sink.put('s1', lambda: factor_grad(dx2, saved['branch1'], s1, spec.value1))
    return dx2, branch_grad(dx2, s1, spec.value1).to(low).view(-1, dx2.shape[-1])
