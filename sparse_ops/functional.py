"""The five public attention functions: argument checks, backend choice, dispatch.

Every function checks its arguments (ValueError naming the problem), picks a backend with
:func:`sparse_ops.backend.choose_backend` and calls either ``sparse_ops.triton_api.<name>`` (same arguments,
no ``backend``) or the PyTorch twin in :mod:`sparse_ops.reference`. Shapes: 1D ``(B, heads, N, D)`` with the
N tokens in Hilbert order, 2D ``(B, heads, H, W, D)``; the output has q's shape and dtype; ``scale``
defaults to ``D ** -0.5``.

Sizes larger than the input can use are clamped here, before either backend sees them, to the smallest value
that gives the same output (``docs/design.md``, "Sizes larger than the input"), so memory and time follow the
tokens, not the requested window. A batch (or head count) of 0 returns an empty output.

NaN and inf, the same on both backends (``docs/design.md``, "NaN and inf"): a NaN or inf in ``q[i]`` makes output row
i NaN (all channels), one in ``k[j]`` or ``v[j]`` makes NaN exactly the output rows of the queries that attend j; no
other row changes (an inf in k may instead act as a masked key on the Triton path). With a finite upstream gradient,
dq is NaN on those rows, dk / dv on the keys those queries attend, drpb on the cells of their pairs; the rest finite.
"""
from __future__ import annotations

from . import reference
from .backend import choose_backend
from .routing import clamp_routing
from .kernels import triton_api
from .reference._common import (ceil_div, check_hw, check_na2d_args, check_positive_int, check_qkv, check_routing_args,
                                check_rpb)

__all__ = ['hilbert_window_attention', 'hilbert_slide_attention', 'hilbert_neighborhood_attention_1d',
           'neighborhood_attention_2d', 'bilevel_routing_attention']


def _check_1d(name, q, k, v, size_name, size, rpb, hw) -> int:
    """Check a 1D call; returns ``size`` (window / kernel) as a python int."""
    check_qkv(q, k, v, 4, name)
    size = check_positive_int(size, size_name, name)
    if rpb is not None:
        check_hw(hw, q.shape[2], name)
        check_rpb(rpb, q.shape[1], None, q, name)
    elif hw is not None:
        check_hw(hw, q.shape[2], name)
    return size


def _empty(q, k, v, rpb=None):
    """The output of a call with batch or heads 0: empty, q's shape and dtype, connected to the inputs."""
    out = (q + k + v) * 0
    return out if rpb is None else out + rpb.sum().to(out.dtype) * 0


def _is_empty(q) -> bool:
    return q.shape[0] == 0 or q.shape[1] == 0


def _resolve_window(q, k, v, window, shift=False, scale=None, *, rpb=None, hw=None, backend=None):
    window = _check_1d('hilbert_window_attention', q, k, v, 'window', window, rpb, hw)
    # one chunk holds every token once window >= N (unshifted) / its first boundary is at >= N (shifted: 2N)
    window = min(window, 2 * q.shape[2] if shift else q.shape[2])
    chosen = choose_backend(backend, q, 'window', window=window, shift=shift, rpb=rpb, hw=hw)
    return chosen, (window, shift, scale), dict(rpb=rpb, hw=hw)


def _resolve_slide(q, k, v, window, scale=None, *, rpb=None, hw=None, backend=None):
    window = _check_1d('hilbert_slide_attention', q, k, v, 'window', window, rpb, hw)
    window = min(window, 2 * q.shape[2] - 1)  # window//2 = N-1 already reaches every key
    chosen = choose_backend(backend, q, 'slide', window=window, rpb=rpb, hw=hw)
    return chosen, (window, scale), dict(rpb=rpb, hw=hw)


def _resolve_na1d(q, k, v, kernel, scale=None, *, rpb=None, hw=None, backend=None):
    kernel = _check_1d('hilbert_neighborhood_attention_1d', q, k, v, 'kernel', kernel, rpb, hw)
    kernel = min(kernel, q.shape[2])  # min(kernel, N) keys: all of them
    chosen = choose_backend(backend, q, 'na1d', kernel=kernel, rpb=rpb, hw=hw)
    return chosen, (kernel, scale), dict(rpb=rpb, hw=hw)


def _resolve_na2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None, backend=None):
    kernel_size, dilation = check_na2d_args(q, k, v, kernel_size, dilation, rpb, 'neighborhood_attention_2d')
    kernel_size, dilation, rpb = _clamp_na2d(kernel_size, dilation, rpb, *q.shape[2:4])
    chosen = choose_backend(backend, q, 'na2d', kernel_size=kernel_size, dilation=dilation, rpb=rpb)
    return chosen, (kernel_size, dilation, rpb, scale), {}


def _resolve_routing(q, k, v, n_win, topk, scale=None, *, backend=None):
    n_win, topk = check_routing_args(q, k, v, n_win, topk, 'bilevel_routing_attention')
    n_win, topk = clamp_routing(n_win, topk, *q.shape[2:4])
    chosen = choose_backend(backend, q, 'routing', n_win=n_win, topk=topk)
    return chosen, (n_win, topk, scale), {}


def _clamp_na2d(kernel_size: int, dilation: int, rpb, h: int, w: int):
    """Dilation beyond max(H, W) makes every sub-grid one pixel (as max(H, W) does); a kernel beyond the longest
    sub-grid side covers whole sides (as the smallest odd size >= that side does). ``rpb (heads, 2k-1, 2k-1)``
    keeps its centre: offsets beyond the clamped kernel cannot occur."""
    dilation = min(dilation, max(h, w))
    side = ceil_div(max(h, w), dilation)
    cap = side if side % 2 else side + 1
    if kernel_size > cap:
        if rpb is not None:
            rpb = rpb[:, kernel_size - cap:kernel_size + cap - 1, kernel_size - cap:kernel_size + cap - 1]
        kernel_size = cap
    return kernel_size, dilation, rpb


def hilbert_window_attention(q, k, v, window, shift=False, scale=None, *, rpb=None, hw=None, backend=None):
    """Attention inside chunks of ``window`` consecutive Hilbert-ordered tokens.

    q, k, v ``(B, heads, N, D)``. ``shift=True`` puts the chunk boundaries at ``window - window//2 + m*window``
    (first chunk ``ceil(window/2)`` tokens, as the official HWT); a ragged last chunk attends within itself.
    ``rpb (heads, 2r-1, 2r-1)`` (optional) is added at the clamped 2D offset (key - query) of the tokens'
    pixels; it needs ``hw=(H, W)`` with ``H*W == N`` (token i is pixel ``hilbert_order(H, W)[i]``).
    Returns ``(B, heads, N, D)`` in q's dtype.
    NaN / inf: exactly the rows of the queries that attend them (module docstring).
    """
    chosen, args, kwargs = _resolve_window(q, k, v, window, shift, scale, rpb=rpb, hw=hw, backend=backend)
    if _is_empty(q):
        return _empty(q, k, v, rpb)
    impl = triton_api if chosen == 'triton' else reference
    return impl.hilbert_window_attention(q, k, v, *args, **kwargs)


def hilbert_slide_attention(q, k, v, window, scale=None, *, rpb=None, hw=None, backend=None):
    """Band attention on the Hilbert sequence: token i attends to j with ``|i - j| <= window//2``.

    q, k, v ``(B, heads, N, D)``; ``rpb`` / ``hw`` as in :func:`hilbert_window_attention`.
    Returns ``(B, heads, N, D)`` in q's dtype.
    NaN / inf: exactly the rows of the queries that attend them (module docstring).
    """
    chosen, args, kwargs = _resolve_slide(q, k, v, window, scale, rpb=rpb, hw=hw, backend=backend)
    if _is_empty(q):
        return _empty(q, k, v, rpb)
    impl = triton_api if chosen == 'triton' else reference
    return impl.hilbert_slide_attention(q, k, v, *args, **kwargs)


def hilbert_neighborhood_attention_1d(q, k, v, kernel, scale=None, *, rpb=None, hw=None, backend=None):
    """1D neighbourhood attention with clamped centre on the Hilbert sequence: every token attends to exactly
    ``min(kernel, N)`` consecutive tokens starting at ``i - kernel//2`` shifted inward at the ends.

    q, k, v ``(B, heads, N, D)``; ``rpb`` / ``hw`` as in :func:`hilbert_window_attention`.
    Returns ``(B, heads, N, D)`` in q's dtype.
    NaN / inf: exactly the rows of the queries that attend them (module docstring).
    """
    chosen, args, kwargs = _resolve_na1d(q, k, v, kernel, scale, rpb=rpb, hw=hw, backend=backend)
    if _is_empty(q):
        return _empty(q, k, v, rpb)
    impl = triton_api if chosen == 'triton' else reference
    return impl.hilbert_neighborhood_attention_1d(q, k, v, *args, **kwargs)


def neighborhood_attention_2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None, backend=None):
    """2D neighbourhood attention, NAT / NATTEN semantics, any H, W >= 1.

    q, k, v ``(B, heads, H, W, D)``, not NATTEN's ``(B, H, W, heads, D)``: permute first (a wrong layout is not
    detected). With dilation d the map splits into d x d interleaved sub-grids; inside its
    sub-grid each query attends to the ``kernel_size``² window centred on it, shifted inward at borders; where a
    sub-grid side is shorter than ``kernel_size`` the window covers that side. ``rpb (heads, 2k-1, 2k-1)``
    (optional) is added at ``[h, dy + k - 1, dx + k - 1]``, offsets (key - query) in sub-grid units.
    Returns ``(B, heads, H, W, D)`` in q's dtype.
    NaN / inf: exactly the rows of the queries that attend them (module docstring).
    """
    chosen, args, kwargs = _resolve_na2d(q, k, v, kernel_size, dilation, rpb, scale, backend=backend)
    if _is_empty(q):
        return _empty(q, k, v, rpb)
    impl = triton_api if chosen == 'triton' else reference
    return impl.neighborhood_attention_2d(q, k, v, *args, **kwargs)


def bilevel_routing_attention(q, k, v, n_win, topk, scale=None, backend=None):
    """BiFormer bi-level routing attention with ragged regions (any H, W >= 1).

    q, k, v ``(B, heads, H, W, D)``. Regions: ``n_win`` bands of ``ceil(H/n_win)`` rows x ``n_win`` bands of
    ``ceil(W/n_win)`` columns. Routing: detached region means over real tokens (heads concatenated), affinity
    ``q_r @ k_r^T``, top-``topk`` non-empty regions, shared across heads. Each query attends to all real
    tokens of its routed regions. ``1 <= topk <= n_win**2``. Returns ``(B, heads, H, W, D)`` in q's dtype.
    NaN / inf: exactly the rows of the queries that attend them (module docstring), under the routing of the inputs
    as given: a NaN region mean ranks first, so a NaN in ``k[j]`` routes every query region to j's region and every
    row is NaN; a NaN in ``q[i]`` makes row i NaN only.
    """
    chosen, args, _ = _resolve_routing(q, k, v, n_win, topk, scale, backend=backend)
    if _is_empty(q):
        return _empty(q, k, v)
    impl = triton_api if chosen == 'triton' else reference
    return impl.bilevel_routing_attention(q, k, v, *args)
