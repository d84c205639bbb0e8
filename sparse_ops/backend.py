"""Backend choice for the sparse_ops public functions: one predicate that says why Triton cannot run.

``why_not_triton(x, op, **kw)`` is the one place that decides whether the Triton kernels can run ``op`` (an
attention pattern, ``'layer_norm'`` or ``'depthwise_conv2d'``) on these inputs: it returns the reason they cannot,
or None. Everything that picks Triton or the twin asks it: ``can_run_triton`` / ``choose_backend`` (attention),
``choose_kernel`` (norm, depthwise conv), and through them the backbones' fused-path decision.

``choose_backend(backend, q, pattern)`` turns the user's ``backend`` argument into ``'triton'`` or ``'torch'``:

- ``'torch'``: always the PyTorch twin.
- ``'triton'``: the Triton core, or a ValueError saying why it cannot run.
- ``None``: Triton for CUDA tensors it can run, else the twin. CPU tensors always get the twin, even with
  ``TRITON_INTERPRET=1`` (the interpreter is for tests and is taken only when forced with ``'triton'``).

Triton is optional (CPU machines run the twins): ``TRITON_MISSING`` is None when ``import triton`` works, else the
reason it does not; :mod:`sparse_ops.kernels` imports the Triton modules only when it is None. ``TRITON_INTERPRET=1``
must be set before ``sparse_ops`` is imported (Triton reads it when the kernels are defined).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os

import torch

try:
    import triton  # noqa: F401  (the one guarded import: sparse_ops.kernels imports the Triton modules after it)
    TRITON_MISSING: str | None = None
except ImportError as _err:
    TRITON_MISSING = f'triton does not import ({type(_err).__name__}: {_err})'

__all__ = ['why_not_triton', 'can_run_triton', 'choose_backend', 'requested_backend', 'use_backend',
           'choose_kernel', 'BACKENDS', 'TRITON_DTYPES', 'TRITON_HEAD_DIMS', 'ATTENTION_PATTERNS', 'KERNEL_OPS',
           'TRITON_MISSING']

logger = logging.getLogger(__name__)

BACKENDS = ('triton', 'torch')
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = (16, 32, 64, 128)
ATTENTION_PATTERNS = ('window', 'slide', 'na1d', 'na2d', 'routing')
KERNEL_OPS = ('layer_norm', 'depthwise_conv2d', 'routing_tables')  # routing_tables: patterns.routing_pattern
MAX_GRID_Y = 65535          # batch * heads: the attention kernels' grid axis 1
_default_backend: contextvars.ContextVar = contextvars.ContextVar('sparse_ops_backend', default=None)
# The same setting as a module global, for torch.compile: Dynamo cannot read a ContextVar (a graph break at every
# call), but it reads a global and guards on it, so a compiled model recompiles when the setting changes. Under
# compile the default is therefore process-wide: the innermost ``use_backend`` entered last, in any thread.
_compiled_default: str | None = None


@contextlib.contextmanager
def use_backend(backend: str | None):
    """Within the block, calls that pass ``backend=None`` use ``backend`` instead.

    Lets a whole model run on one path without a model argument, e.g. the twin path of a
    backbone for benchmarks: ``with use_backend('torch'): model(x)``. The setting is a context
    variable, restored on exit (no global state leaks between tests or threads); ``torch.compile`` reads a
    process-wide copy of it instead (``_compiled_default``).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"use_backend: backend must be 'triton', 'torch' or None, got {backend=}")
    global _compiled_default
    token, outer = _default_backend.set(backend), _compiled_default
    _compiled_default = backend
    try:
        yield
    finally:
        _default_backend.reset(token)
        _compiled_default = outer


def _interpret_mode() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _image_span(t: torch.Tensor) -> int:
    """Largest element offset inside one image of a ``(B, H, W, C)`` tensor, plus one."""
    _, h, w, c = t.shape
    return (h - 1) * abs(t.stride(1)) + (w - 1) * abs(t.stride(2)) + c


def _why_not_attention(q: torch.Tensor, pattern: str, rpb=None) -> str | None:
    if q.dtype == torch.bfloat16 and q.device.type == 'cpu':
        return f'bf16 is unreliable in the Triton interpreter (tl.dot), got dtype={q.dtype}'
    if q.dtype not in TRITON_DTYPES:
        return f'the Triton core supports {[str(t) for t in TRITON_DTYPES]}, got dtype={q.dtype}'
    head_dim = q.shape[-1]
    if head_dim not in TRITON_HEAD_DIMS:
        return f'the Triton core supports head dims {TRITON_HEAD_DIMS}, got {head_dim=}'
    want_dim = 5 if pattern in ('na2d', 'routing') else 4
    if q.dim() != want_dim:
        return f'pattern {pattern!r} needs {want_dim}-d q, got q.shape={tuple(q.shape)}'
    bh = q.shape[0] * q.shape[1]
    if bh > MAX_GRID_Y:
        return f'batch * heads must be <= {MAX_GRID_Y} (grid axis 1), got {bh=}'
    if rpb is not None and (rpb.dim() != 3 or rpb.shape[0] != q.shape[1]):
        return f'rpb must be (heads, 2r-1, 2r-1), got rpb.shape={tuple(rpb.shape)}'
    return None


def why_not_triton(x: torch.Tensor, op: str, *, rpb=None, residual=None, **_pattern_args) -> str | None:
    """Why the Triton kernels cannot run ``op`` on these inputs, or None when they can: THE predicate.

    ``op``: an attention pattern (:data:`ATTENTION_PATTERNS`, x = q ``(B, heads, N, D)`` or ``(B, heads, H, W, D)``,
    ``rpb`` its bias table) or one of :data:`KERNEL_OPS` (x the op's input; ``residual`` the depthwise conv's).
    Reasons, in the order checked: triton does not import; a device other than CUDA / CPU; CPU without
    ``TRITON_INTERPRET=1``; for attention: bf16 on CPU (interpreter), a dtype other than fp16 / bf16 / fp32, a head
    dim other than 16 / 32 / 64 / 128, q with the wrong number of dims for the pattern, batch * heads > 65535, an
    rpb not ``(heads, 2r-1, 2r-1)``; for the depthwise conv: one image spanning >= 2**31 elements. The other pattern
    arguments (``window``, ``kernel_size``, ``n_win``, ...) are accepted and not checked: every size runs.
    """
    if op not in ATTENTION_PATTERNS and op not in KERNEL_OPS:
        return f'unknown op {op!r}, expected one of {ATTENTION_PATTERNS + KERNEL_OPS}'
    if TRITON_MISSING is not None:
        return TRITON_MISSING
    if x.device.type not in ('cpu', 'cuda'):
        return f'the Triton kernels need CUDA tensors, got device={x.device}'
    if x.device.type == 'cpu' and not _interpret_mode():
        return f'CPU tensors need TRITON_INTERPRET=1 for the Triton kernels, got device={x.device}'
    if op in ATTENTION_PATTERNS:
        return _why_not_attention(x, op, rpb)
    if op == 'depthwise_conv2d':
        spans = [_image_span(x), x.shape[1] * x.shape[2] * x.shape[3]]
        if residual is not None:
            spans.append(_image_span(residual))
        if max(spans) >= 2 ** 31:
            return f'one image must span < 2**31 elements (int32 offsets), got {max(spans)}'
    return None


def can_run_triton(q: torch.Tensor, *, pattern: str, raise_error: bool = False, **kw) -> bool:
    """Whether the Triton kernels can run ``pattern`` (an attention pattern or a :data:`KERNEL_OPS` op) on q
    (attention: ``(B, heads, N, D)`` or ``(B, heads, H, W, D)``):
    :func:`why_not_triton` is None. ``**kw``: the pattern's arguments (``rpb`` is checked). Logs the reason at debug
    level when not; with ``raise_error=True`` raises ValueError with the reason instead of returning False.
    """
    reason = why_not_triton(q, pattern, **kw)
    if reason is None:
        return True
    logger.debug('sparse_ops: Triton skipped for %s: %s', pattern, reason)
    if raise_error:
        name = f'sparse_ops.{pattern}' if pattern in KERNEL_OPS else f'sparse_ops {pattern}'
        raise ValueError(f"{name}: backend='triton' cannot run: {reason}")
    return False


def choose_kernel(backend: str | None, what: str, x: torch.Tensor, **kw) -> str:
    """``'triton'`` or ``'torch'`` for the non-attention op ``sparse_ops.<what>`` (one of :data:`KERNEL_OPS`) on x,
    by the rule of :func:`choose_backend`; ``**kw`` go to :func:`why_not_triton`."""
    return _choose(backend, what, x, kw)


def _choose(backend: str | None, op: str, x: torch.Tensor, kw: dict) -> str:
    """The backend rule (module doc) for ``op`` on x: ``'torch'``; ``'triton'`` or a ValueError with
    :func:`why_not_triton`'s reason; None: Triton for CUDA tensors it can run, else the twin."""
    chosen = requested_backend(backend, op)
    if chosen == 'torch':
        return 'torch'
    if chosen == 'triton':
        can_run_triton(x, pattern=op, raise_error=True, **kw)
        return 'triton'
    if not x.is_cuda:
        logger.debug('sparse_ops: torch twin for %s on %s tensors (Triton only when forced)', op, x.device)
        return 'torch'
    return 'triton' if can_run_triton(x, pattern=op, **kw) else 'torch'


def requested_backend(backend: str | None, what: str) -> str | None:
    """The user's ``backend`` checked (ValueError naming ``what``), or the ``use_backend`` default when None."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"sparse_ops {what}: backend must be 'triton', 'torch' or None, got {backend=}")
    if backend is not None:
        return backend
    return _compiled_default if torch.compiler.is_compiling() else _default_backend.get()


def choose_backend(backend: str | None, q: torch.Tensor, pattern: str, **kw) -> str:
    """Resolve ``backend`` (``'triton' | 'torch' | None``) to ``'triton'`` or ``'torch'`` for the attention
    ``pattern`` on q (see module doc); ``**kw``: the pattern's arguments."""
    return _choose(backend, pattern, q, kw)
