"""PyTorch twin of BiFormer's bi-level routing attention for any H, W >= 1.

Regions: rows split into ``n_win`` bands of ``ceil(H / n_win)`` rows (the last bands may be shorter or empty),
columns likewise; region ``a * n_win + b`` is band a of rows x band b of columns (row-major region grid).
Routing (no gradient): ``sparse_ops.routing.route_regions``, the one definition every path uses (mean of q and
of k over each region's real tokens with all heads concatenated, affinity ``q_r @ k_r^T``, empty regions -inf,
top-``topk`` key regions per query region by its tie rule), shared by all heads. Token attention: every query
attends to all real tokens of its routed regions; padding never enters the softmax. At sizes divisible by n_win this is
BiFormer's attention (pass their ``qk_dim ** -0.5`` as ``scale``).

This twin gathers the routed regions' K/V (``topk`` copies per query region, ``(B, heads, R, topk*rs, D)``);
the Triton path reads them in place.
Layout: q, k, v ``(B, heads, H, W, D)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..routing import route_regions
from ._common import ceil_div, check_routing_args, default_scale, masked_attention

__all__ = ['bilevel_routing_attention', 'region_partition', 'route_regions', 'to_regions', 'from_regions']


def region_partition(h: int, w: int, n_win: int, device=None) -> tuple[int, int, torch.Tensor]:
    """Region sizes and token validity: returns ``(rh, rw, valid)`` with ``valid`` bool ``(n_win**2, rh*rw)``
    (False for padding slots; an all-False row is an empty region)."""
    rh, rw = ceil_div(h, n_win), ceil_div(w, n_win)
    valid = torch.zeros(n_win * rh, n_win * rw, dtype=torch.bool, device=device)
    valid[:h, :w] = True
    return rh, rw, _grid_to_regions(valid, n_win, rh, rw)


def _grid_to_regions(x: torch.Tensor, n_win: int, rh: int, rw: int) -> torch.Tensor:
    """``(..., n_win*rh, n_win*rw)`` -> ``(..., n_win**2, rh*rw)``."""
    lead = x.shape[:-2]
    x = x.reshape(*lead, n_win, rh, n_win, rw).transpose(-3, -2)
    return x.reshape(*lead, n_win * n_win, rh * rw)


def to_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """``(B, heads, H, W, D)`` -> zero-padded regions ``(B, heads, n_win**2, rh*rw, D)``."""
    b, heads, h, w, d = x.shape
    rh, rw = ceil_div(h, n_win), ceil_div(w, n_win)
    x = F.pad(x, (0, 0, 0, n_win * rw - w, 0, n_win * rh - h))
    x = x.reshape(b, heads, n_win, rh, n_win, rw, d).transpose(3, 4)
    return x.reshape(b, heads, n_win * n_win, rh * rw, d)


def from_regions(x: torch.Tensor, n_win: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_regions`: ``(B, heads, n_win**2, rh*rw, D)`` -> ``(B, heads, H, W, D)``."""
    b, heads, _, _, d = x.shape
    rh, rw = ceil_div(h, n_win), ceil_div(w, n_win)
    x = x.reshape(b, heads, n_win, n_win, rh, rw, d).transpose(3, 4)
    return x.reshape(b, heads, n_win * rh, n_win * rw, d)[:, :, :h, :w]


def bilevel_routing_attention(q, k, v, n_win, topk, scale=None, backend=None):
    """Bi-level routing attention (BiFormer) with ragged regions; see the module docstring.

    q, k, v ``(B, heads, H, W, D)``; ``1 <= topk <= n_win**2``. ``backend`` is accepted for signature parity
    and ignored (torch twin). Returns q's shape and dtype.
    """
    n_win, topk = check_routing_args(q, k, v, n_win, topk, 'bilevel_routing_attention')
    b, heads, h, w, d = q.shape
    scale = default_scale(scale, d)
    _, _, valid = region_partition(h, w, n_win, device=q.device)
    r, rs = valid.shape
    idx = route_regions(q, k, n_win, topk)                              # (B, R, topk)
    batch = torch.arange(b, device=q.device)[:, None, None]

    def gather(x):  # (B, heads, R, rs, D) -> (B, heads, R, topk*rs, D)
        g = x.transpose(1, 2)[batch, idx]                               # (B, R, topk, heads, rs, D)
        return g.permute(0, 3, 1, 2, 4, 5).reshape(b, heads, r, topk * rs, d)

    qr = to_regions(q, n_win)
    allowed = valid[idx].reshape(b, 1, r, 1, topk * rs)
    out = masked_attention(qr, gather(to_regions(k, n_win)), gather(to_regions(v, n_win)), allowed, scale)
    return from_regions(out, n_win, h, w)
