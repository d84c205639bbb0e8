"""Shared pieces of the PyTorch twins: argument checks, masked softmax attention, relative position bias.

Shape legend (same as the package): 1D tensors ``(B, heads, N, D)``, 2D tensors ``(B, heads, H, W, D)``.
"""
from __future__ import annotations

import operator

import torch

__all__ = ['check_qkv', 'check_positive_int', 'check_rpb', 'check_hw', 'default_scale', 'masked_attention',
           'rpb_lookup', 'ceil_div', 'split_heads']


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv (B, *S, 3C)`` contiguous, channels ``[q | k | v]`` each head-major -> q, k, v ``(B, heads, N, D)`` views,
    ``N = prod(S)``, ``D = C / heads`` (the layout of a fused ``Linear(C, 3C)``; shared by the twin and kernels)."""
    b, c3 = qkv.shape[0], qkv.shape[-1]
    d = c3 // (3 * num_heads)
    return qkv.view(b, -1, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int, name: str) -> None:
    """Raise ValueError unless q, k, v are floating tensors of one shape with ``ndim`` dims and non-empty
    sequence / head dims."""
    layout = '(B, heads, N, D)' if ndim == 4 else '(B, heads, H, W, D)'
    for t_name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name}: {t_name} must be a torch.Tensor, got {type(t).__name__}')
        if t.dim() != ndim:
            raise ValueError(f'{name}: {t_name} must have {ndim} dims {layout}, got {t_name}.shape={tuple(t.shape)}')
        if not t.is_floating_point():
            raise ValueError(f'{name}: {t_name} must be a floating tensor, got {t_name}.dtype={t.dtype}')
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f'{name}: q, k, v must have the same shape {layout}, got q.shape={tuple(q.shape)}, '
                         f'k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}')
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f'{name}: q, k, v must have the same dtype, got {q.dtype=}, {k.dtype=}, {v.dtype=}')
    if not (q.device == k.device == v.device):
        raise ValueError(f'{name}: q, k, v must be on one device, got {q.device=}, {k.device=}, {v.device=}')
    if any(s == 0 for s in q.shape[2:]):
        raise ValueError(f'{name}: token and head dims must be non-empty, got q.shape={tuple(q.shape)}')


def check_positive_int(value, what: str, name: str) -> int:
    """Return ``value`` as a python int, or raise ValueError unless it is an integer >= 1 (bools rejected)."""
    try:
        as_int = operator.index(value)
    except TypeError:
        as_int = None
    if as_int is None or isinstance(value, bool):
        raise ValueError(f'{name}: {what} must be an int >= 1, got {what}={value!r}')
    if as_int < 1:
        raise ValueError(f'{name}: {what} must be >= 1, got {what}={as_int}')
    return as_int


def check_rpb(rpb, heads: int, side: int | None, q: torch.Tensor, name: str) -> None:
    """``rpb`` must be ``(heads, S, S)`` with odd S (``S == side`` when given), same dtype/device family as q."""
    if not isinstance(rpb, torch.Tensor):
        raise ValueError(f'{name}: rpb must be a tensor (heads, 2r-1, 2r-1), got {type(rpb).__name__}')
    shape = tuple(rpb.shape)
    if rpb.dim() != 3 or shape[0] != heads or shape[1] != shape[2] or shape[1] % 2 == 0:
        want = f'({heads}, {side}, {side})' if side else f'({heads}, 2r-1, 2r-1)'
        raise ValueError(f'{name}: rpb must have shape {want}, got rpb.shape={shape}')
    if side is not None and shape[1] != side:
        raise ValueError(f'{name}: rpb must have shape ({heads}, {side}, {side}), got rpb.shape={shape}')
    if rpb.device != q.device:
        raise ValueError(f'{name}: rpb must be on q.device, got {rpb.device=}, {q.device=}')
    if not rpb.is_floating_point():
        raise ValueError(f'{name}: rpb must be a floating tensor, got {rpb.dtype=}')


def check_na2d_args(q, k, v, kernel_size, dilation, rpb, name: str) -> tuple[int, int]:
    """The checks of ``neighborhood_attention_2d``'s arguments (5D q, k, v; odd ``kernel_size`` >= 1; ``dilation``
    >= 1; ``rpb (heads, 2k-1, 2k-1)`` or None); returns ``(kernel_size, dilation)`` as python ints."""
    check_qkv(q, k, v, 5, name)
    kernel_size = check_positive_int(kernel_size, 'kernel_size', name)
    if kernel_size % 2 == 0:
        raise ValueError(f'{name}: kernel_size must be odd, got {kernel_size=}')
    dilation = check_positive_int(dilation, 'dilation', name)
    if rpb is not None:
        check_rpb(rpb, q.shape[1], 2 * kernel_size - 1, q, name)
    return kernel_size, dilation


def check_routing_args(q, k, v, n_win, topk, name: str) -> tuple[int, int]:
    """The checks of ``bilevel_routing_attention``'s arguments (5D q, k, v; ``n_win`` >= 1; ``1 <= topk <=
    n_win**2``); returns ``(n_win, topk)`` as python ints."""
    check_qkv(q, k, v, 5, name)
    n_win = check_positive_int(n_win, 'n_win', name)
    topk = check_positive_int(topk, 'topk', name)
    if topk > n_win * n_win:
        raise ValueError(f'{name}: topk must be in [1, n_win**2={n_win * n_win}], got {topk=}')
    return n_win, topk


def check_hw(hw, n: int, name: str) -> tuple[int, int]:
    if hw is None:
        raise ValueError(f'{name}: rpb needs hw=(H, W) with H*W == N to place tokens, got {hw=}')
    try:
        h, w = (int(s) for s in hw)
    except (TypeError, ValueError):
        raise ValueError(f'{name}: hw must be a pair (H, W), got {hw=}') from None
    if h < 1 or w < 1 or h * w != n:
        raise ValueError(f'{name}: hw must satisfy H*W == N with H, W >= 1, got {hw=}, N={n}')
    return h, w


def default_scale(scale, head_dim: int) -> float:
    return head_dim ** -0.5 if scale is None else float(scale)


def rpb_lookup(rpb: torch.Tensor, q_yx: torch.Tensor, k_yx: torch.Tensor) -> torch.Tensor:
    """Relative position bias for query/key coordinate tensors.

    rpb: ``(heads, 2r-1, 2r-1)``; q_yx ``(..., 2)`` and k_yx ``(..., 2)`` long, broadcastable to each other.
    Returns ``(heads, *broadcast_shape)`` with ``rpb[h, clamp(dy) + r - 1, clamp(dx) + r - 1]``,
    ``(dy, dx) = k_yx - q_yx`` clamped to ``[-(r-1), r-1]``. Differentiable in rpb.
    """
    side = rpb.shape[-1]
    r1 = (side - 1) // 2
    d = (k_yx - q_yx).clamp(-r1, r1) + r1
    flat = d[..., 0] * side + d[..., 1]
    return rpb.reshape(rpb.shape[0], side * side)[:, flat]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale * q @ k^T + bias, masked to ``allowed``) @ v.

    q ``(..., M, D)``, k / v ``(..., S, D)``, ``allowed`` bool broadcastable to ``(..., M, S)``, ``bias``
    broadcastable to ``(..., M, S)``. Masked logits are replaced (not added) by the dtype's lowest value so
    a row with no allowed key gives finite (unused) values instead of NaN. fp16 / bf16 inputs are computed
    in fp32 and cast back.

    NaN and inf (docs/design.md, "NaN and inf"): a row of q, k or v holding a NaN or an inf is read as 0, and the
    output row of every query with such a q row or an allowed key with such a k or v row is NaN (all D channels);
    no other row changes. In the backward (finite upstream gradient) those queries' gradient rows, the gradient rows
    of every key they are allowed, and the bias cells of their allowed pairs are NaN; the rest is finite. A masked
    key's value never meets a weight of 0 (``0 * NaN``): the NaN rows come from a carrier term that is 0 on every
    other row (``_nan_carrier``). Finite CPU inputs skip that bookkeeping (it would add 0).
    """
    out_dtype = q.dtype
    if q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
        bias = None if bias is None else bias.float()
    if _plain_path_applies(q, k, v):
        return _softmax_attention(q, k, v, allowed, scale, bias).to(out_dtype)
    q_bad = ~torch.isfinite(q).all(-1)                                         # (..., M)
    kv_bad = ~(torch.isfinite(k).all(-1) & torch.isfinite(v).all(-1))        # (..., S)
    out = _softmax_attention(q.masked_fill(q_bad[..., None], 0), k.masked_fill(kv_bad[..., None], 0),
                             v.masked_fill(kv_bad[..., None], 0), allowed, scale, bias)
    hit = q_bad | (allowed & kv_bad[..., None, :]).any(-1)                    # (..., M)
    return (out + _nan_carrier(hit, q, k, v, allowed, bias)[..., None]).to(out_dtype)


def _plain_path_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """True for finite CPU inputs outside ``torch.compile``: the NaN bookkeeping of :func:`masked_attention` then
    changes nothing (it adds 0), and reading the check costs no device sync. Elsewhere it always runs (no branch)."""
    if torch.compiler.is_compiling() or any(t.device.type != 'cpu' for t in (q, k, v)):
        return False
    return all(bool(torch.isfinite(t).all()) for t in (q, k, v))


def _softmax_attention(q, k, v, allowed, scale, bias):
    """The attention of :func:`masked_attention` on finite inputs (same shapes)."""
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    return torch.matmul(torch.softmax(logits, dim=-1), v)


def _nan_carrier(hit: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """``(..., M)``: NaN where ``hit``, else 0, times a sum over q's row and the allowed keys' k and v rows and bias
    cells (taken with ``where``, so a masked key adds nothing): its gradient is NaN on exactly those rows and cells
    of the hit queries and 0 elsewhere."""
    kv = (k.sum(-1) + v.sum(-1))[..., None, :]                                 # (..., 1, S)
    if bias is not None:
        kv = kv + bias.to(kv.dtype)
    carrier = q.sum(-1) + torch.where(allowed, kv, 0.0).sum(-1)
    return torch.where(hit, float('nan'), 0.0).to(carrier.dtype) * carrier
