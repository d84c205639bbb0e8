"""CUDA graphs of a backbone's training step: ``torch.cuda.make_graphed_callables`` per input signature, LRU-bounded.

Why: at feature-map sizes a training step of these backbones waits for the host, not the GPU (hundreds of kernel
launches, each costing more host time than its kernel takes); a replayed graph issues them for about the cost of one
launch. PyTorch's ``make_graphed_callables`` does the capture and replay (forward graph, backward graph, an autograd
node that replays them); ``docs/benchmarks.md`` ("Graph replay") has the measurement that chose it.

What this module adds around it (``BackboneGraphs``, one per backbone, owned by ``SparseBackbone``):

- When: a training call (module in train mode, autograd recording, a CUDA input, not compiling, not under
  ``with_cp``) is captured at the ``warmup``-th call in a row with its signature -- input shape, dtype, device,
  ``requires_grad``, the autocast state and the ``sparse_ops.use_backend`` default -- then replayed whenever that
  signature comes again. Every other call runs eagerly: eval, ``no_grad``, sizes that do not repeat. No capture
  while a module of the backbone has forward or backward hooks (they would run only at capture; hooks added after
  a capture do not run on replays) or a ``SyncBatchNorm`` in training mode (its collectives are not captured).
- Memory cap: at most ``max_signatures`` captured signatures (default 3), least recently used out. Each holds a
  private memory pool of about the backbone's own training memory at its size (activations saved for backward,
  gradients of the parameters, the outputs) for as long as it is kept.
- The whole ``SparseBackbone._forward`` is one graph: stem, blocks, downsamplers and norms, with the autocast
  weight casts (``cast_linear_weights``) inside it. The graph is a function of the input and the parameters
  (``torch.func.functional_call``), so the parameters' gradients are handed on by autograd outside it (DDP's
  hooks run as in eager mode).
  Stochastic depth draws fresh masks at every replay (the graph's random offsets advance per replay).
- Outputs are fresh tensors (copies of the graph's buffers), so a caller may keep them across steps.
- Parameter gradients come out of the graph's own buffers, which autograd hands to a ``None`` ``.grad`` as is
  (no copy); a ``.grad`` still set when the next replay starts (gradient accumulation) is copied off the buffer
  first, so accumulation adds up as in eager mode.
- A replay overwrites what the previous replay of the same signature saved for backward. A call whose signature has
  a forward still waiting for its backward runs eagerly instead (two forwards before one backward stay correct); a
  backward reaching a forward whose buffers were overwritten since (``retain_graph`` after a newer step) raises.
- A capture that fails warns once, naming the first error of the capture, drops this backbone's graphs and turns
  its replay off (it then runs eagerly). When CUDA itself invalidated the capture, PyTorch's ``capture_end`` raises
  before it ends the capture's bookkeeping, and the device's default CUDA generator stays marked as capturing: every
  later random op (``randn``, dropout, stochastic depth) would raise "Offset increment outside graph capture
  encountered unexpectedly". ``_end_failed_capture`` clears the mark with a capture of one op that succeeds.
- Graphs of an evicted signature are freed at the eviction (with a ``gc.collect()``); those of a deleted backbone
  at Python's next garbage collection (``make_graphed_callables`` builds classes, which live in reference
  cycles): ``gc.collect()`` then ``torch.cuda.empty_cache()`` returns the memory to the device.
"""
from __future__ import annotations

import collections
import gc
import logging
import warnings
import weakref
from typing import Any, Callable

import torch
from mmengine.logging import print_log
from torch import nn

from sparse_ops.backend import requested_backend

from .layers.linear import cast_linear_weights

__all__ = ['BackboneGraphs']


class _Body(nn.Module):
    """The backbone's ``_forward`` as a module: the backbone's children registered again (the same objects), the
    backbone itself only by weak reference (no cycle through it)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        for name, child in backbone.named_children():
            self.add_module(name, child)
        self._owner = weakref.ref(backbone)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        owner = self._owner()
        with cast_linear_weights(owner):
            return tuple(owner._forward(x))


class _Entry:
    """One captured signature: the graphed callable, its replay count, the autograd node of its pending forward."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.gen, self.pending = fn, 0, None

    def busy(self) -> bool:
        return self.pending is not None and self.pending() is not None


class _Fresh(torch.autograd.Function):
    """``outs -> copies``: the replay's outputs as tensors of their own; its backward marks the forward done and
    refuses a forward whose graph buffers a later replay overwrote."""

    @staticmethod
    def forward(ctx, entry: _Entry, *outs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.entry, ctx.gen = entry, entry.gen
        return tuple(o.clone() for o in outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple:
        entry = ctx.entry
        if entry.gen != ctx.gen:
            raise RuntimeError('backward through a CUDA-graph replay whose buffers a later replay overwrote '
                               '(retain_graph across steps?); build the backbone with cuda_graphs=False for this')
        entry.pending = None
        return (None, *grads)


def _uncapturable(backbone: nn.Module) -> str | None:
    """Why ``backbone`` cannot be captured now (a module with hooks, a ``SyncBatchNorm`` in training mode), or None."""
    for name, m in backbone.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return f'module {name or type(m).__name__!r} has hooks'
        if isinstance(m, nn.SyncBatchNorm) and m.training:
            return f'{name!r} is a SyncBatchNorm in training mode'
    return None


def _make_graphed(body: nn.Module, x: torch.Tensor, params: list[torch.Tensor]) -> Callable:
    """``make_graphed_callables`` over ``body`` as a function of ``(x, *params)`` for the sample ``x``; call the
    result as ``fn(x, *params)``. The graph reads the parameters through leaves of their own that share their
    memory (so it sees every optimizer update), and autograd outside the graph hands their gradients on: the
    parameters' gradient accumulators never run inside the capture (under DDP, or with last step's loss still
    alive, they belong to the default stream, and the capture would fail). Autocast's cast cache is off during
    the capture, as ``make_graphed_callables`` requires."""
    names = [name for name, _ in body.named_parameters()]

    def step(inp: torch.Tensor, *ps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.func.functional_call(body, dict(zip(names, ps)), (inp,))

    leaves = tuple(p.detach().requires_grad_(p.requires_grad) for p in params)
    autocast = torch.is_autocast_enabled('cuda')
    with torch.autocast('cuda', dtype=torch.get_autocast_dtype('cuda'), enabled=autocast, cache_enabled=False), \
            warnings.catch_warnings():
        # the leaves' accumulators are made on the warm-up's side stream, then met on the capture stream: a
        # synchronisation between two side streams, which the capture records; nothing to warn the user about
        warnings.filterwarnings('ignore', message="The AccumulateGrad node's stream does not match")
        return torch.cuda.make_graphed_callables(step, (x, *leaves), num_warmup_iters=1, allow_unused_input=True)


def _first_error(error: BaseException) -> BaseException:
    """The error that started ``error``'s chain: a failed capture raises from ``capture_end`` while handling the
    error of the op that invalidated it (Python keeps ``__context__`` chains free of cycles)."""
    while error.__context__ is not None:
        error = error.__context__
    return error


def _end_failed_capture(device: torch.device) -> None:
    """After a capture that CUDA invalidated: capture one op on ``device`` so that PyTorch runs the capture
    prologue and epilogue of the device's default generator again and it is no longer marked as capturing (module
    docstring)."""
    with torch.cuda.device(device):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            torch.zeros(1, device=device).add_(1)
        torch.cuda.synchronize(device)


class BackboneGraphs:
    """The captured training steps of one backbone (module docstring).

    Args:
        max_signatures: captured signatures kept (least recently used out).
        warmup: the call, in a row with one signature, that captures it (>= 1; the calls before run eagerly).
        capture: ``capture(body, x, params) -> fn`` with ``fn(x, *params) -> outputs`` (default: through
            ``make_graphed_callables``; tests pass an emulation).
        emulate: also replay CPU inputs (with an emulating ``capture``; for tests).
    """

    def __init__(self, max_signatures: int = 3, warmup: int = 2, capture: Callable | None = None,
                 emulate: bool = False) -> None:
        for name, value in (('max_signatures', max_signatures), ('warmup', warmup)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an int >= 1, got {value!r}')
        self.max_signatures, self.warmup = max_signatures, warmup
        self.capture_fn = capture or _make_graphed
        self.emulate = emulate
        self.enabled = True
        self.captures = 0                   # signatures captured so far
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()   # LRU, newest last
        self._seen: tuple[Any, int] = (None, 0)
        self._skipped: str | None = None    # the last reason a capture was skipped (logged once per reason)

    def __reduce__(self):                   # deepcopy / pickle: a fresh cache (graphs are not copied)
        return BackboneGraphs, (self.max_signatures, self.warmup, self.capture_fn, self.emulate)

    def signatures(self) -> list[tuple]:
        """The captured signatures, least recently used first."""
        return list(self._entries)

    def clear(self) -> None:
        """Drop every captured signature and free its graphs now."""
        self._entries.clear()
        gc.collect()

    def applies(self, backbone: nn.Module, x: torch.Tensor) -> bool:
        """Whether this call may replay: enabled, CUDA input (or ``emulate``), training, autograd recording, not
        compiling, not under inference mode or ``with_cp``."""
        return (self.enabled and (x.is_cuda or self.emulate) and backbone.training and torch.is_grad_enabled()
                and not torch.is_inference_mode_enabled() and not torch.compiler.is_compiling()
                and not backbone.with_cp)

    def run(self, backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The backbone's outputs from a replayed (or newly captured) graph, or None: the caller runs eagerly."""
        if not self.applies(backbone, x):
            return None
        params = list(backbone.parameters())
        trainable = tuple(p.requires_grad for p in params)
        if not any(trainable):
            return None
        autocast = torch.is_autocast_enabled(x.device.type)
        key = (tuple(x.shape), x.dtype, x.device, x.requires_grad, autocast,
               torch.get_autocast_dtype(x.device.type) if autocast else None, trainable,
               requested_backend(None, 'cuda graphs'))
        entry = self._entries.get(key)
        if entry is None:
            seen, count = self._seen
            count = count + 1 if seen == key else 1
            self._seen = (key, count)
            if count < self.warmup:
                return None
            why = _uncapturable(backbone)
            if why:
                if self._skipped != why:
                    self._skipped = why
                    print_log(f'{type(backbone).__name__}: no CUDA graph capture while {why}; running eagerly',
                              logger='current', level=logging.INFO)
                return None
            entry = self._capture(backbone, key, x, params)
            if entry is None:
                return None
        elif entry.busy():
            return None
        self._entries.move_to_end(key)
        for p in params:                    # accumulation: a .grad may still be a graph's gradient buffer
            if p.grad is not None:
                p.grad = p.grad.clone()
        outs = entry.fn(x, *params)
        entry.gen += 1
        fresh = _Fresh.apply(entry, *outs)
        entry.pending = weakref.ref(fresh[0].grad_fn) if fresh[0].grad_fn is not None else None
        return fresh

    def _capture(self, backbone: nn.Module, key: tuple, x: torch.Tensor, params: list) -> _Entry | None:
        if len(self._entries) >= self.max_signatures:
            self._entries.popitem(last=False)
            gc.collect()                    # the evicted graphs live in reference cycles (module docstring)
        body = _Body(backbone)
        # the capture's warm-up step must leave no trace: random state and buffers (BatchNorm statistics) restored
        buffers = [(b, b.clone()) for b in backbone.buffers()]
        try:
            body_params = list(body.parameters())
            if len(body_params) != len(params) or any(a is not b for a, b in zip(body_params, params)):
                # the graph reads the parameters by the names of its body (the children): one held by the backbone
                # itself would be missed or misaligned
                raise RuntimeError('a parameter is held by the backbone itself, not by one of its child modules')
            with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
                fn = self.capture_fn(body, x.detach().clone().requires_grad_(x.requires_grad), params)
        except Exception as error:          # noqa: BLE001 (a real bug fails again in the eager call that follows)
            self.enabled = False
            self._entries.clear()
            first = _first_error(error)
            if x.is_cuda:
                try:
                    _end_failed_capture(x.device)
                except Exception as again:  # noqa: BLE001
                    warnings.warn(f'could not end the failed CUDA graph capture ({again!r}); random ops on '
                                  f'{x.device} may now fail', stacklevel=4)
            warnings.warn(f'CUDA graph capture of {type(backbone).__name__} failed, running eagerly from now on: '
                          f'{first!r}' + (f' (then {error!r})' if first is not error else ''), stacklevel=4)
            return None
        finally:
            with torch.no_grad():
                for b, c in buffers:
                    b.copy_(c)
        self.captures += 1
        entry = self._entries[key] = _Entry(fn)
        print_log(f'{type(backbone).__name__}: captured a CUDA graph of the training step for input {key[0]} '
                  f'{key[1]}, autocast {key[5]} ({len(self._entries)} of {self.max_signatures} kept)',
                  logger='current', level=logging.DEBUG)
        return entry
