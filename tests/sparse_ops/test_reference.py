"""PyTorch twins vs naive dense masked attention built independently from the definitions.

The naive side builds the explicit N x N mask (and the N x N bias) with plain loops over tokens, in fp64, and
runs dense softmax attention; the twins must match it in the output and in the gradients of q, k, v and rpb.
Sizes are tiny and odd on purpose (1x1, 1x17, 13x7, 31x45), with ragged windows, kernels larger than the map,
dilation > 1 with sub-grids shorter than the kernel, topk = 1 and = all regions, n_win not dividing H / W.
"""
import math

import pytest
import torch

import sparse_ops
from sparse_ops import hilbert_order, reference
from sparse_ops.backend import choose_backend

B, HEADS, D = 2, 2, 8
BIG = 500  # maps with more tokens run with batch 1 to keep the dense fp64 reference cheap


# ----------------------------------------------------------------------------------------------------------
# naive side: masks from the definitions, dense attention
# ----------------------------------------------------------------------------------------------------------
def naive_attention(q, k, v, mask, scale=None, bias=None):
    """Dense softmax attention over the last two dims; mask (..., N, N) bool, bias (..., N, N)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        logits = logits + bias
    logits = logits.masked_fill(~mask, float('-inf'))
    return torch.softmax(logits, dim=-1) @ v


def window_mask(n, window, shift):
    """Same chunk; chunk boundaries at m*window, or at window - window//2 + m*window when shifted (the official
    HWT's roll by +window//2: the first chunk holds ceil(window/2) tokens)."""
    first = window - window // 2 if shift else 0
    boundaries = set(range(first, n, window))
    chunk, ids = 0, []
    for i in range(n):
        if i > 0 and i in boundaries:
            chunk += 1
        ids.append(chunk)
    ids = torch.tensor(ids)
    return ids[:, None] == ids[None, :]


def band_mask(n, window):
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs() <= window // 2


def na1d_mask(n, kernel):
    mask = torch.zeros(n, n, dtype=torch.bool)
    size = min(kernel, n)
    for i in range(n):
        start = min(max(i - kernel // 2, 0), n - size)
        mask[i, start:start + size] = True
    assert bool((mask.sum(1) == size).all())
    return mask


def hilbert_bias(rpb, h, w):
    """bias[head, i, j] = rpb[head, clamp(dy) + r - 1, clamp(dx) + r - 1], (dy, dx) = pixel(j) - pixel(i)."""
    order = hilbert_order(h, w)
    y, x = order // w, order % w
    r1 = (rpb.shape[-1] - 1) // 2
    dy = (y[None, :] - y[:, None]).clamp(-r1, r1) + r1
    dx = (x[None, :] - x[:, None]).clamp(-r1, r1) + r1
    return rpb[:, dy, dx]


def na2d_mask_and_offsets(h, w, kernel, dilation):
    """Row-major N x N mask of dilated 2D NA and the (dy, dx) key - query offsets in sub-grid units."""
    def axis_window(p, length):
        members = list(range(p % dilation, length, dilation))
        i = members.index(p)
        size = min(kernel, len(members))
        start = min(max(i - kernel // 2, 0), len(members) - size)
        return [(m, j - i) for j, m in enumerate(members) if start <= j < start + size]

    n = h * w
    query, key, dys, dxs = [], [], [], []
    for y in range(h):
        rows = axis_window(y, h)
        for x in range(w):
            for ky, dy in rows:
                for kx, dx in axis_window(x, w):
                    query.append(y * w + x)
                    key.append(ky * w + kx)
                    dys.append(dy)
                    dxs.append(dx)
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[query, key] = True
    off = torch.zeros(n, n, 2, dtype=torch.long)
    off[query, key] = torch.stack([torch.tensor(dys), torch.tensor(dxs)], dim=1)
    return mask, off


def routing_mask(q, k, n_win, topk):
    """(B, 1, N, N) mask of bi-level routing: region means over real tokens (heads concatenated), affinity,
    empty regions excluded, top-k regions; query i sees key j iff j's region is routed from i's region."""
    b, heads, h, w, d = q.shape
    rh, rw = math.ceil(h / n_win), math.ceil(w / n_win)
    region = torch.tensor([(y // rh) * n_win + x // rw for y in range(h) for x in range(w)])
    qf = q.permute(0, 2, 3, 1, 4).reshape(b, h * w, heads * d)
    kf = k.permute(0, 2, 3, 1, 4).reshape(b, h * w, heads * d)
    masks = []
    for bi in range(b):
        q_mean = torch.zeros(n_win * n_win, heads * d, dtype=q.dtype)
        k_mean = torch.zeros_like(q_mean)
        empty = torch.ones(n_win * n_win, dtype=torch.bool)
        for r in range(n_win * n_win):
            members = region == r
            if members.any():
                empty[r] = False
                q_mean[r] = qf[bi, members].mean(0)
                k_mean[r] = kf[bi, members].mean(0)
        affinity = (q_mean @ k_mean.T).masked_fill(empty[None, :], float('-inf'))
        routed = affinity.topk(topk, dim=-1).indices
        m = torch.zeros(h * w, h * w, dtype=torch.bool)
        for i in range(h * w):
            m[i] = torch.isin(region, routed[region[i]])
        masks.append(m)
    return torch.stack(masks)[:, None]


# ----------------------------------------------------------------------------------------------------------
# comparison helper
# ----------------------------------------------------------------------------------------------------------
def assert_same_fwd_bwd(twin, naive, tensors, atol=1e-9, rtol=1e-7):
    """Run twin(*leaves) and naive(*leaves) on fp64 copies; compare outputs and all input gradients."""
    outs, grads = [], []
    grad_out = None
    for fn in (twin, naive):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        out = fn(*leaves)
        if grad_out is None:
            grad_out = torch.randn_like(out)
        outs.append(out)
        grads.append(torch.autograd.grad(out, leaves, grad_out))
    torch.testing.assert_close(outs[0], outs[1], atol=atol, rtol=rtol, msg='output differs')
    for i, (g_twin, g_naive) in enumerate(zip(*grads)):
        torch.testing.assert_close(g_twin, g_naive, atol=atol, rtol=rtol, msg=f'grad of input {i} differs')


def qkv(*shape, dtype=torch.float64):
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


def hw_id(hw):
    return f'{hw[0]}x{hw[1]}'


# ----------------------------------------------------------------------------------------------------------
# 1D Hilbert patterns
# ----------------------------------------------------------------------------------------------------------
# (pattern, size, shift, (H, W), rpb side or 0)
CASES_1D = [
    ('window', 1, False, (1, 1), 0),
    ('window', 4, True, (1, 17), 3),
    ('window', 10, False, (13, 7), 5),
    ('window', 10, True, (13, 7), 5),
    ('window', 7, True, (13, 7), 0),
    ('window', 100, False, (13, 7), 3),
    ('window', 49, True, (31, 45), 7),
    ('slide', 1, False, (1, 1), 3),
    ('slide', 5, False, (1, 17), 3),
    ('slide', 8, False, (13, 7), 5),
    ('slide', 200, False, (13, 7), 0),
    ('slide', 21, False, (31, 45), 5),
    ('na1d', 1, False, (1, 1), 0),
    ('na1d', 7, False, (1, 17), 3),
    ('na1d', 6, False, (13, 7), 5),
    ('na1d', 100, False, (13, 7), 3),
    ('na1d', 49, False, (31, 45), 7),
]


def case_1d_id(c):
    pattern, size, shift, hw, side = c
    return f"{pattern}-{'k' if pattern == 'na1d' else 'w'}{size}{'-shift' if shift else ''}-{hw_id(hw)}" \
           f"{f'-rpb{side}' if side else ''}"


def twin_1d(pattern, size, shift, hw):
    if pattern == 'window':
        return lambda q, k, v, rpb=None: reference.hilbert_window_attention(q, k, v, size, shift, rpb=rpb, hw=hw)
    if pattern == 'slide':
        return lambda q, k, v, rpb=None: reference.hilbert_slide_attention(q, k, v, size, rpb=rpb, hw=hw)
    return lambda q, k, v, rpb=None: reference.hilbert_neighborhood_attention_1d(q, k, v, size, rpb=rpb, hw=hw)


def mask_1d(pattern, size, shift, n):
    if pattern == 'window':
        return window_mask(n, size, shift)
    if pattern == 'slide':
        return band_mask(n, size)
    return na1d_mask(n, size)


@pytest.mark.parametrize('case', CASES_1D, ids=case_1d_id)
def test_1d_twin_matches_dense(case):
    pattern, size, shift, (h, w), side = case
    n = h * w
    mask = mask_1d(pattern, size, shift, n)
    twin = twin_1d(pattern, size, shift, (h, w))
    tensors = qkv(1 if n > BIG else B, HEADS, n, D)
    if side:
        rpb = torch.randn(HEADS, side, side, dtype=torch.float64)
        bias_fn = lambda r: hilbert_bias(r, h, w)  # noqa: E731
        assert_same_fwd_bwd(lambda q, k, v, r: twin(q, k, v, r),
                            lambda q, k, v, r: naive_attention(q, k, v, mask, bias=bias_fn(r)), tensors + [rpb])
    else:
        assert_same_fwd_bwd(twin, lambda q, k, v: naive_attention(q, k, v, mask), tensors)


def test_window_shift_first_chunk_has_half_window():
    # shifted windows of 8 over 20 tokens: chunks [0,4) [4,12) [12,20); token 0 must ignore token 4
    q, k, v = qkv(1, 1, 20, D)
    out = reference.hilbert_window_attention(q, k, v, 8, shift=True)
    v2 = v.clone()
    v2[:, :, 4:] += 100.0
    out2 = reference.hilbert_window_attention(q, k, v2, 8, shift=True)
    assert torch.equal(out[:, :, :4], out2[:, :, :4])
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:])


# ----------------------------------------------------------------------------------------------------------
# 2D neighbourhood attention
# ----------------------------------------------------------------------------------------------------------
# ((H, W), kernel, dilation, with rpb)
CASES_NA2D = [
    ((1, 1), 1, 1, True),
    ((1, 1), 3, 1, True),
    ((1, 17), 5, 1, True),
    ((1, 17), 3, 4, False),
    ((13, 7), 3, 1, True),
    ((13, 7), 5, 2, True),
    ((13, 7), 9, 1, True),
    ((13, 7), 3, 7, True),
    ((9, 11), 5, 3, False),
    ((20, 19), 3, 1, True),
    ((31, 45), 7, 2, True),
]


def case_na2d_id(c):
    hw, kernel, dilation, with_rpb = c
    return f"{hw_id(hw)}-k{kernel}-d{dilation}{'-rpb' if with_rpb else ''}"


@pytest.mark.parametrize('case', CASES_NA2D, ids=case_na2d_id)
def test_na2d_twin_matches_dense(case):
    (h, w), kernel, dilation, with_rpb = case
    mask, off = na2d_mask_and_offsets(h, w, kernel, dilation)
    b = 1 if h * w > BIG else B
    tensors = qkv(b, HEADS, h, w, D)

    def flat(t):
        return t.reshape(b, HEADS, h * w, D)

    def naive(q, k, v, rpb=None):
        bias = None if rpb is None else rpb[:, off[..., 0] + kernel - 1, off[..., 1] + kernel - 1]
        return naive_attention(flat(q), flat(k), flat(v), mask, bias=bias).reshape(b, HEADS, h, w, D)

    def twin(q, k, v, rpb=None):
        return reference.neighborhood_attention_2d(q, k, v, kernel, dilation, rpb=rpb)

    if with_rpb:
        tensors.append(torch.randn(HEADS, 2 * kernel - 1, 2 * kernel - 1, dtype=torch.float64))
    assert_same_fwd_bwd(twin, naive, tensors)


def test_na2d_every_query_sees_full_window():
    # NATTEN invariant: k*k keys per query wherever both sub-grid sides are >= k
    mask, _ = na2d_mask_and_offsets(12, 10, 3, 2)
    assert bool((mask.sum(1) == 9).all())
    lo, size = reference.axis_neighbors(12, 3, 2)
    assert bool((size == 3).all()) and int(lo.max()) <= 6 - 3


# ----------------------------------------------------------------------------------------------------------
# bi-level routing attention
# ----------------------------------------------------------------------------------------------------------
# ((H, W), n_win, topk)
CASES_ROUTING = [
    ((1, 1), 1, 1),
    ((8, 8), 2, 1),
    ((8, 8), 2, 4),
    ((13, 7), 3, 2),
    ((13, 7), 3, 9),
    ((5, 6), 4, 3),
    ((5, 6), 4, 16),
    ((1, 17), 3, 2),
    ((31, 45), 4, 3),
]


@pytest.mark.parametrize('case', CASES_ROUTING, ids=lambda c: f'{hw_id(c[0])}-nwin{c[1]}-top{c[2]}')
def test_routing_twin_matches_dense(case):
    (h, w), n_win, topk = case
    b = 1 if h * w > BIG else B
    tensors = qkv(b, HEADS, h, w, D)
    mask = routing_mask(*tensors[:2], n_win, topk)

    def flat(t):
        return t.reshape(b, HEADS, h * w, D)

    def naive(q, k, v):
        return naive_attention(flat(q), flat(k), flat(v), mask).reshape(b, HEADS, h, w, D)

    assert_same_fwd_bwd(lambda q, k, v: reference.bilevel_routing_attention(q, k, v, n_win, topk), naive, tensors)


def biformer_style_attention(q, k, v, n_win, topk, scale):
    """BiFormer's attention math at sizes divisible by n_win, written in its own data flow: channels-last
    images with heads concatenated, region split, region means, scaled affinity, top-k, gathered K/V."""
    b, heads, h, w, d = q.shape
    rh, rw = h // n_win, w // n_win

    def regions(t):  # (B, heads, H, W, D) -> (B, p2, rh*rw, heads*D)
        t = t.permute(0, 2, 3, 1, 4).reshape(b, n_win, rh, n_win, rw, heads * d)
        return t.permute(0, 1, 3, 2, 4, 5).reshape(b, n_win * n_win, rh * rw, heads * d)

    qp, kp, vp = regions(q), regions(k), regions(v)
    logits = (qp.detach().mean(2) * scale) @ kp.detach().mean(2).transpose(-1, -2)
    idx = torch.topk(logits, topk, dim=-1).indices                        # (B, p2, topk)
    p2 = n_win * n_win
    sel = idx[..., None, None].expand(-1, -1, -1, rh * rw, heads * d)
    k_sel = torch.gather(kp[:, None].expand(-1, p2, -1, -1, -1), 2, sel)  # (B, p2, topk, rh*rw, heads*D)
    v_sel = torch.gather(vp[:, None].expand(-1, p2, -1, -1, -1), 2, sel)

    def split_heads(t):  # (B, p2, ..., heads*D) -> (B, p2, heads, tokens, D)
        return t.reshape(b, p2, -1, heads, d).transpose(2, 3)

    attn = torch.softmax((split_heads(qp) * scale) @ split_heads(k_sel).transpose(-1, -2), dim=-1)
    out = attn @ split_heads(v_sel)                                      # (B, p2, heads, rh*rw, D)
    out = out.reshape(b, n_win, n_win, heads, rh, rw, d).permute(0, 3, 1, 4, 2, 5, 6)
    return out.reshape(b, heads, h, w, d)


@pytest.mark.parametrize('hw, n_win, topk', [((8, 8), 2, 2), ((14, 21), 7, 4), ((12, 12), 3, 9)],
                         ids=['8x8-nwin2-top2', '14x21-nwin7-top4', '12x12-nwin3-top9'])
def test_routing_equals_biformer_math_when_divisible(hw, n_win, topk):
    h, w = hw
    tensors = qkv(B, HEADS, h, w, D)
    scale = (HEADS * D) ** -0.5  # BiFormer's qk_dim ** -0.5
    assert_same_fwd_bwd(lambda q, k, v: reference.bilevel_routing_attention(q, k, v, n_win, topk, scale),
                        lambda q, k, v: biformer_style_attention(q, k, v, n_win, topk, scale), tensors)


def test_route_regions_picks_largest_affinity_and_skips_empty():
    # 5x6 map, n_win 4: region bands of 2 -> row band 3 and column band 3 are empty (9 non-empty regions)
    h, w, n_win = 5, 6, 4
    q = torch.ones(1, HEADS, h, w, D, requires_grad=True)
    k = torch.zeros(1, HEADS, h, w, D)
    for y in range(h):
        for x in range(w):
            k[0, :, y, x] = (y // 2) * 10 + (x // 2)       # region mean grows with the region id
    idx = reference.route_regions(q, k, n_win, 3)
    assert idx.shape == (1, n_win * n_win, 3) and not idx.requires_grad
    # largest means: regions (2,2), (2,1), (2,0) -> ids 10, 9, 8 for every non-empty query region
    empty = {3, 7, 11, 12, 13, 14, 15}
    for r in set(range(n_win * n_win)) - empty:
        assert sorted(idx[0, r].tolist()) == [8, 9, 10], f'query region {r} routed to {idx[0, r].tolist()}'
    all_idx = reference.route_regions(q, k, n_win, 9)
    assert not set(all_idx.flatten().tolist()) & empty


# ----------------------------------------------------------------------------------------------------------
# dtypes, public dispatch, backend choice, argument checks
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 2e-5), (torch.float16, 3e-3)], ids=['fp32', 'fp16'])
def test_low_precision_close_to_fp64(dtype, tol):
    q, k, v = qkv(1, HEADS, 9, 8, 16)
    pairs = [
        (lambda *t: reference.neighborhood_attention_2d(*t, 3, 2)),
        (lambda *t: reference.bilevel_routing_attention(*t, 3, 9)),
        (lambda *t: reference.hilbert_window_attention(*[x.flatten(2, 3) for x in t], 16, True)),
    ]
    for fn in pairs:
        ref64 = fn(q, k, v)
        out = fn(q.to(dtype), k.to(dtype), v.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref64, atol=tol, rtol=tol)


def test_public_functions_use_twin_on_cpu():
    q, k, v = qkv(1, HEADS, 5, 7, D, dtype=torch.float32)
    f = [x.flatten(2, 3) for x in (q, k, v)]
    rpb = torch.randn(HEADS, 5, 5)
    pairs = [
        (sparse_ops.hilbert_window_attention(*f, 8, True, rpb=rpb, hw=(5, 7)),
         reference.hilbert_window_attention(*f, 8, True, rpb=rpb, hw=(5, 7))),
        (sparse_ops.hilbert_slide_attention(*f, 9), reference.hilbert_slide_attention(*f, 9)),
        (sparse_ops.hilbert_neighborhood_attention_1d(*f, 9, backend='torch'),
         reference.hilbert_neighborhood_attention_1d(*f, 9)),
        (sparse_ops.neighborhood_attention_2d(q, k, v, 3, 2, rpb=rpb[:, :5, :5]),
         reference.neighborhood_attention_2d(q, k, v, 3, 2, rpb=rpb[:, :5, :5])),
        (sparse_ops.bilevel_routing_attention(q, k, v, 2, 3), reference.bilevel_routing_attention(q, k, v, 2, 3)),
    ]
    for got, want in pairs:
        assert torch.equal(got, want)


def test_integer_like_sizes_accepted():
    q, k, v = qkv(1, HEADS, 4, 5, D)
    n = torch.tensor(3)
    torch.testing.assert_close(sparse_ops.neighborhood_attention_2d(q, k, v, n, torch.tensor(2)),
                               sparse_ops.neighborhood_attention_2d(q, k, v, 3, 2), atol=0, rtol=0)
    torch.testing.assert_close(sparse_ops.bilevel_routing_attention(q, k, v, torch.tensor(2), n),
                               sparse_ops.bilevel_routing_attention(q, k, v, 2, 3), atol=0, rtol=0)


def test_non_contiguous_inputs():
    # q, k, v as produced by a fused qkv projection: strided views
    x = torch.randn(1, 6, 7, 3 * HEADS * 16, dtype=torch.float64)
    q, k, v = x.reshape(1, 6, 7, 3, HEADS, 16).permute(3, 0, 4, 1, 2, 5).unbind(0)
    assert not q.is_contiguous()
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    for fn in (lambda *t: reference.neighborhood_attention_2d(*t, 3, 2),
               lambda *t: reference.bilevel_routing_attention(*t, 2, 2),
               lambda *t: reference.hilbert_window_attention(*[a.flatten(2, 3) for a in t], 42),
               lambda *t: reference.hilbert_slide_attention(*[a.transpose(2, 3).flatten(2, 3) for a in t], 5)):
        torch.testing.assert_close(fn(q, k, v), fn(qc, kc, vc), atol=0, rtol=0)


@pytest.mark.gpu
def test_twins_on_cuda_match_cpu():
    q, k, v = qkv(1, HEADS, 9, 11, 16, dtype=torch.float32)
    rpb = torch.randn(HEADS, 5, 5)
    for fn in (lambda *t: reference.neighborhood_attention_2d(*t, 3, 2, t[0].new_tensor(rpb)),
               lambda *t: reference.bilevel_routing_attention(*t, 3, 4),
               lambda *t: reference.hilbert_neighborhood_attention_1d(*[a.flatten(2, 3) for a in t], 7,
                                                                      rpb=t[0].new_tensor(rpb), hw=(9, 11))):
        torch.testing.assert_close(fn(q.cuda(), k.cuda(), v.cuda()).cpu(), fn(q, k, v), atol=1e-5, rtol=1e-5)


def test_choose_backend_on_cpu(monkeypatch):
    q = torch.randn(1, 2, 16, 32)
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert choose_backend(None, q, 'window') == 'torch'   # interpreter only when forced
    assert choose_backend('torch', q, 'window') == 'torch'
    with pytest.raises(ValueError, match='backend must be'):
        choose_backend('cuda', q, 'window')
    with pytest.raises(ValueError, match='head_dim=8'):
        choose_backend('triton', torch.randn(1, 2, 16, 8), 'window')
    with pytest.raises(ValueError, match='float64'):
        choose_backend('triton', q.double(), 'window')
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert not sparse_ops.can_run_triton(q, pattern='window')
    with pytest.raises(ValueError, match='TRITON_INTERPRET'):
        sparse_ops.hilbert_window_attention(q, q, q, 4, backend='triton')


X4 = torch.zeros(1, 2, 12, 8)
X5 = torch.zeros(1, 2, 3, 4, 8)
BAD_CALLS = [
    ('1d-ndim', lambda: sparse_ops.hilbert_window_attention(X5, X5, X5, 4), 'must have 4 dims'),
    ('1d-shape', lambda: sparse_ops.hilbert_slide_attention(X4, X4, X4[:, :, :5], 4), 'same shape'),
    ('window-0', lambda: sparse_ops.hilbert_window_attention(X4, X4, X4, 0), 'window=0'),
    ('window-float', lambda: sparse_ops.hilbert_window_attention(X4, X4, X4, 2.0), 'window=2.0'),
    ('window-bool', lambda: sparse_ops.hilbert_window_attention(X4, X4, X4, True), 'window=True'),
    ('kernel-0', lambda: sparse_ops.hilbert_neighborhood_attention_1d(X4, X4, X4, 0), 'kernel=0'),
    ('rpb-no-hw', lambda: sparse_ops.hilbert_window_attention(X4, X4, X4, 4, rpb=torch.zeros(2, 3, 3)), 'hw='),
    ('hw-mismatch', lambda: sparse_ops.hilbert_window_attention(X4, X4, X4, 4, rpb=torch.zeros(2, 3, 3),
                                                                hw=(3, 5)), 'H\\*W == N'),
    ('rpb-heads', lambda: sparse_ops.hilbert_slide_attention(X4, X4, X4, 4, rpb=torch.zeros(3, 3, 3),
                                                             hw=(3, 4)), 'rpb.shape=\\(3, 3, 3\\)'),
    ('2d-ndim', lambda: sparse_ops.neighborhood_attention_2d(X4, X4, X4, 3), 'must have 5 dims'),
    ('k-even', lambda: sparse_ops.neighborhood_attention_2d(X5, X5, X5, 4), 'kernel_size=4'),
    ('k-0', lambda: sparse_ops.neighborhood_attention_2d(X5, X5, X5, 0), 'kernel_size=0'),
    ('dilation-0', lambda: sparse_ops.neighborhood_attention_2d(X5, X5, X5, 3, 0), 'dilation=0'),
    ('rpb-2d', lambda: sparse_ops.neighborhood_attention_2d(X5, X5, X5, 3, rpb=torch.zeros(2, 3, 3)),
     '\\(2, 5, 5\\)'),
    ('nwin-0', lambda: sparse_ops.bilevel_routing_attention(X5, X5, X5, 0, 1), 'n_win=0'),
    ('topk-0', lambda: sparse_ops.bilevel_routing_attention(X5, X5, X5, 2, 0), 'topk=0'),
    ('topk-big', lambda: sparse_ops.bilevel_routing_attention(X5, X5, X5, 2, 5), 'topk=5'),
    ('int-q', lambda: sparse_ops.hilbert_window_attention(X4.long(), X4.long(), X4.long(), 4), 'floating'),
]


@pytest.mark.parametrize('call, match', [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_use_backend_overrides_none_and_restores():
    from sparse_ops import choose_backend, use_backend
    q = torch.zeros(1, 1, 4, 16)
    assert choose_backend(None, q, 'window') == 'torch'
    with use_backend('torch'):
        assert choose_backend(None, q, 'window') == 'torch'
    with pytest.raises(ValueError, match='backend must be'):
        with use_backend('cuda'):
            pass
    if not q.is_cuda:
        # forcing triton through the context on CPU without interpret support fails loudly,
        # exactly like passing backend='triton'
        import os
        if os.environ.get('TRITON_INTERPRET') != '1':
            with use_backend('triton'), pytest.raises(ValueError):
                choose_backend(None, q, 'window')
