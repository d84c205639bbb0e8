"""Backend choice for the sparse_ops public functions: a predicate that explains itself.

``can_run_triton(q, pattern=...)`` says whether the Triton core (``sparse_ops.triton_api``) can run these
inputs; it logs (``logging.debug``) why not, and raises a ValueError with the reason when asked to.
``choose_backend(backend, q, pattern)`` turns the user's ``backend`` argument into ``'triton'`` or ``'torch'``:

- ``'torch'``: always the PyTorch twin.
- ``'triton'``: the Triton core, or a ValueError saying why it cannot run.
- ``None``: Triton for CUDA tensors it can run, else the twin. CPU tensors always get the twin, even with
  ``TRITON_INTERPRET=1`` (the interpreter is for tests and is taken only when forced with ``'triton'``).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os

import torch

__all__ = ['can_run_triton', 'choose_backend', 'requested_backend', 'use_backend', 'load_triton_api',
           'load_triton_module', 'why_not_kernel', 'choose_kernel', 'BACKENDS', 'TRITON_DTYPES', 'TRITON_HEAD_DIMS']

logger = logging.getLogger(__name__)

BACKENDS = ('triton', 'torch')
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = (16, 32, 64, 128)

_api_cache: dict = {}
_default_backend: contextvars.ContextVar = contextvars.ContextVar('sparse_ops_backend', default=None)


@contextlib.contextmanager
def use_backend(backend: str | None):
    """Within the block, calls that pass ``backend=None`` use ``backend`` instead.

    Lets a whole model run on one path without a model argument, e.g. the twin path of a
    backbone for benchmarks: ``with use_backend('torch'): model(x)``. The setting is a context
    variable, restored on exit (no global state leaks between tests or threads).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"use_backend: backend must be 'triton', 'torch' or None, got {backend=}")
    token = _default_backend.set(backend)
    try:
        yield
    finally:
        _default_backend.reset(token)


def load_triton_module(name: str = 'sparse_ops.triton_api'):
    """Import a Triton module of the package once; returns it or raises the (cached) ImportError."""
    if name not in _api_cache:
        try:
            _api_cache[name] = (importlib.import_module(name), None)
        except Exception as err:  # ImportError, or triton failing to initialise
            _api_cache[name] = (None, f'{type(err).__name__}: {err}')
    module, error = _api_cache[name]
    if module is None:
        raise ImportError(f'{name} is unavailable ({error})')
    return module


def load_triton_api():
    """Import ``sparse_ops.triton_api`` once; returns the module or raises the (cached) ImportError."""
    return load_triton_module('sparse_ops.triton_api')


def _interpret_mode() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _why_not_triton(q: torch.Tensor, pattern: str, **kw) -> str | None:
    """Reason the Triton core cannot run, or None when it can."""
    if q.is_cuda:
        pass
    elif q.device.type == 'cpu':
        if not _interpret_mode():
            return f'CPU tensors need TRITON_INTERPRET=1 for the Triton core, got device={q.device}'
        if q.dtype == torch.bfloat16:
            return f'bf16 is unreliable in the Triton interpreter (tl.dot), got dtype={q.dtype}'
    else:
        return f'the Triton core needs CUDA tensors, got device={q.device}'
    if q.dtype not in TRITON_DTYPES:
        return f'the Triton core supports {[str(t) for t in TRITON_DTYPES]}, got dtype={q.dtype}'
    head_dim = q.shape[-1]
    if head_dim not in TRITON_HEAD_DIMS:
        return f'the Triton core supports head dims {TRITON_HEAD_DIMS}, got {head_dim=}'
    try:
        api = load_triton_api()
    except ImportError as err:
        return str(err)
    check = getattr(api, 'can_run_triton', None)
    if check is not None:
        try:
            check(q, pattern=pattern, raise_error=True, **kw)
        except ValueError as err:
            return str(err)
    return None


def can_run_triton(q: torch.Tensor, *, pattern: str, raise_error: bool = False, **kw) -> bool:
    """Whether the Triton core can run ``pattern`` on q (``(B, heads, N, D)`` or ``(B, heads, H, W, D)``).

    Requirements: ``sparse_ops.triton_api`` imports; q on CUDA, or on CPU with ``TRITON_INTERPRET=1`` (not bf16
    there); dtype fp16 / bf16 / fp32; head dim in 16, 32, 64, 128; plus the pattern checks of
    ``triton_api.can_run_triton`` when it defines one (``**kw`` is passed on). Logs the reason at debug level
    when not; with ``raise_error=True`` raises ValueError with the reason instead of returning False.
    """
    reason = _why_not_triton(q, pattern, **kw)
    if reason is None:
        return True
    logger.debug('sparse_ops: Triton skipped for %s: %s', pattern, reason)
    if raise_error:
        raise ValueError(f"sparse_ops {pattern}: backend='triton' cannot run: {reason}")
    return False


def why_not_kernel(x: torch.Tensor, module: str) -> str | None:
    """Why the Triton kernels of ``module`` (a non-attention op: LayerNorm, depthwise conv) cannot run on x's
    device, or None: CPU needs ``TRITON_INTERPRET=1``, other devices are not supported, the module must import."""
    if x.device.type == 'cpu' and not _interpret_mode():
        return f'CPU tensors need TRITON_INTERPRET=1, got device={x.device}'
    if x.device.type not in ('cpu', 'cuda'):
        return f'needs CUDA tensors, got device={x.device}'
    try:
        load_triton_module(module)
    except ImportError as err:
        return str(err)
    return None


def choose_kernel(backend: str | None, what: str, x: torch.Tensor, why_not) -> str:
    """``'triton'`` or ``'torch'`` for the non-attention op ``sparse_ops.<what>`` on x; ``why_not()`` gives the
    reason the kernels cannot run (None: they can). ``'triton'`` where they cannot raises a ValueError with it;
    None takes the kernels for CUDA tensors they can run, else the twin (CPU always the twin unless forced)."""
    chosen = requested_backend(backend, what)
    if chosen == 'triton':
        reason = why_not()
        if reason is not None:
            raise ValueError(f"sparse_ops.{what}: backend='triton' cannot run: {reason}")
    elif chosen is None:
        chosen = 'triton' if x.is_cuda and why_not() is None else 'torch'
    return chosen


def requested_backend(backend: str | None, what: str) -> str | None:
    """The user's ``backend`` checked (ValueError naming ``what``), or the ``use_backend`` default when None."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"sparse_ops {what}: backend must be 'triton', 'torch' or None, got {backend=}")
    return backend if backend is not None else _default_backend.get()


def choose_backend(backend: str | None, q: torch.Tensor, pattern: str, **kw) -> str:
    """Resolve ``backend`` (``'triton' | 'torch' | None``) to ``'triton'`` or ``'torch'`` (see module doc)."""
    backend = requested_backend(backend, pattern)
    if backend == 'torch':
        return 'torch'
    if backend == 'triton':
        can_run_triton(q, pattern=pattern, raise_error=True, **kw)
        return 'triton'
    if not q.is_cuda:
        logger.debug('sparse_ops: torch twin for %s on %s tensors (Triton only when forced)', pattern, q.device)
        return 'torch'
    return 'triton' if can_run_triton(q, pattern=pattern, **kw) else 'torch'
