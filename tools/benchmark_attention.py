"""Benchmark the block-sparse Triton core against FlexAttention, window partition + SDPA, BiFormer-style gather +
matmul and gather + SDPA, and dense SDPA (GPU only; a script, not a test).

    PYTHONPATH=. python3 tools/benchmark_attention.py --out bench_out [--sizes s1,s4] [--flex-budget-s 300]
    PYTHONPATH=. python3 tools/benchmark_attention.py --tune [--tune-all] --out tune_out   # time configs of ours

Per (size, pattern, implementation): GPU ms of the forward and of forward+backward (sum of the device time of all
kernels launched per call, read with torch.profiler: what the implementation makes the GPU do, without Python
launch overhead) and the eager wall-clock median (``triton.testing.do_bench``, includes the CPU launch cost),
TFLOP/s on the computed blocks (4*D per computed (q, k) pair forward, 14*D
forward+backward), achieved GB/s against the HBM floor (q, k, v read and o written once; backward adds q, k, v, o, dO
read and dq, dk, dv written) using the device-to-device copy bandwidth measured at start, and peak extra memory of
one forward+backward. Prints one table and writes ``bench.json`` and ``bench.png`` into ``--out``.

FlexAttention masks are built once per (size, pattern) outside the timed region (for routing this favours flex:
in a model its block mask depends on the data and must be rebuilt every call; the build time is reported
separately). "rowmajor" = the pattern's natural 2D definition on the row-major sequence (square 8x8 windows for
window 64, a 7x7 sliding box for the band, NATTEN's clamped window with dilation for 2D NA), written as the plain
formula a user would write (``na2d_formula``, ``na1d_formula``; no lookup tables); "hilbert" = the same 1D / 2D mask
on our sequence order, inputs permuted before timing (2D NA there reads our own order's tables: that order has no
closed form).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from sparse_ops import patterns, routing, triton_api  # noqa: E402
from sparse_ops.block_sparse_fwd import Config, configs_for  # noqa: E402
from sparse_ops.reference.routing import from_regions  # noqa: E402
from sparse_ops.routing import route_regions  # noqa: E402

SIZES = {  # name: (B, heads, H, W, D)
    's1': (2, 4, 128, 128, 32),
    's2': (1, 3, 256, 256, 32),
    's3': (1, 8, 64, 64, 64),
    's4': (2, 3, 200, 336, 32),
}
PATTERNS = ['window', 'window_shift', 'band', 'na1d', 'na2d', 'na2d_d4', 'routing']
WINDOW, BAND, NA1D, NA2D_K, N_WIN, TOPK = 64, 49, 49, 7, 8, 4
# 2- and 3-stage tiles (3 stages keep more copies in flight: tools/kernel_resources.py, "inflight")
TUNE_SHORTLIST = [Config(32, 32, 4, 2), Config(64, 16, 4, 2), Config(64, 32, 4, 2), Config(64, 32, 4, 3),
                  Config(64, 64, 4, 2), Config(64, 64, 4, 3),
                  Config(128, 32, 8, 2), Config(128, 64, 8, 2), Config(128, 64, 4, 3), Config(128, 64, 8, 3)]


# ----------------------------------------------------------------------------------------------------------------
# measurement helpers
# ----------------------------------------------------------------------------------------------------------------
def bench_ms(fn, grads=None):
    import triton
    return triton.testing.do_bench(fn, warmup=20, rep=60, grad_to_none=grads, return_mode='median')


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write)."""
    x = torch.empty(2 ** 30 // 2, dtype=torch.bfloat16, device='cuda').normal_()
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    return 2 * x.numel() * 2 / (ms * 1e-3)


def gpu_ms(fn, iters=10, grads=None):
    """Mean GPU time per call of fn: the sum of the device time of every kernel / copy it launches, read with
    torch.profiler (no hardware counters needed). Excludes Python launch overhead and idle gaps, so it compares
    implementations on what they make the GPU do, whatever their CPU cost."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            if grads:
                for t in grads:
                    t.grad = None
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / iters / 1e3


def measure(fwd, qkv, pairs, floor_bytes, bandwidth, d):
    """fwd(q, k, v) -> out. Returns a dict of timings and derived rates."""
    q, k, v = (t.detach().requires_grad_() for t in qkv)

    def fw():
        with torch.no_grad():
            fwd(q, k, v)
    fw()
    out = fwd(q, k, v)
    g = torch.randn_like(out)
    del out

    def fb():
        fwd(q, k, v).backward(g)
    fb()
    e_f, e_fb = bench_ms(fw), bench_ms(fb, grads=[q, k, v])
    t_f, t_fb = gpu_ms(fw), gpu_ms(fb, grads=[q, k, v])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fb()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    fl_f, fl_fb = 4 * d * pairs, 14 * d * pairs
    b_f, b_fb = floor_bytes, 3 * floor_bytes
    return dict(fwd_ms=t_f, fb_ms=t_fb, eager_fwd_ms=e_f, eager_fb_ms=e_fb, pairs=pairs,
                tflops_fwd=fl_f / t_f * 1e-9, tflops_fb=fl_fb / t_fb * 1e-9,
                gbs_fwd=b_f / t_f * 1e-6, gbs_fb=b_fb / t_fb * 1e-6,
                x_floor_fwd=t_f / (b_f / bandwidth * 1e3), x_floor_fb=t_fb / (b_fb / bandwidth * 1e3),
                peak_mb=peak)


# ----------------------------------------------------------------------------------------------------------------
# our implementations (public Triton functions)
# ----------------------------------------------------------------------------------------------------------------
def ours(pattern, hh, ww, cfg):
    f = {
        'window': lambda q, k, v: triton_api.hilbert_window_attention(q, k, v, WINDOW, config=cfg),
        'window_shift': lambda q, k, v: triton_api.hilbert_window_attention(q, k, v, WINDOW, True, config=cfg),
        'band': lambda q, k, v: triton_api.hilbert_slide_attention(q, k, v, BAND, config=cfg),
        'na1d': lambda q, k, v: triton_api.hilbert_neighborhood_attention_1d(q, k, v, NA1D, config=cfg),
        'na2d': lambda q, k, v: triton_api.neighborhood_attention_2d(q, k, v, NA2D_K, 1, config=cfg),
        'na2d_d4': lambda q, k, v: triton_api.neighborhood_attention_2d(q, k, v, NA2D_K, 4, config=cfg),
        'routing': lambda q, k, v: triton_api.bilevel_routing_attention(q, k, v, N_WIN, TOPK, config=cfg),
    }[pattern]
    return f


def our_pattern(pattern, b, n, hh, ww, cfg, q=None, k=None):
    bm, bn = cfg.block_m, cfg.block_n
    if pattern == 'window':
        return patterns.hilbert_window_pattern(n, WINDOW, False, bm, bn, 'cuda')
    if pattern == 'window_shift':
        return patterns.hilbert_window_pattern(n, WINDOW, True, bm, bn, 'cuda')
    if pattern == 'band':
        return patterns.hilbert_slide_pattern(n, BAND, bm, bn, 'cuda')
    if pattern == 'na1d':
        return patterns.hilbert_na1d_pattern(n, NA1D, bm, bn, 'cuda')
    if pattern in ('na2d', 'na2d_d4'):
        return patterns.na2d_pattern(hh, ww, NA2D_K, 1 if pattern == 'na2d' else 4, bm, bn, 'cuda')
    layout = routing.routing_layout(hh, ww, N_WIN, bm, bn, 'cuda')
    return routing.routing_pattern(layout, route_regions(q, k, N_WIN, TOPK))


def computed_pairs(p, b, heads):
    per = p.kv_num.sum().item() * p.block_m * p.block_n
    return per * heads * (b if p.kv_num.shape[0] == 1 else 1)


# ----------------------------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------------------------
def window_sdpa(shift):
    """Square 8x8 windows (64 tokens) on the 2D map: partition, SDPA, reverse (+ roll for shift, no Swin mask)."""
    def f(q, k, v):
        b, h, hh, ww, d = q.shape
        ws = 8

        def part(x):
            if shift:
                x = torch.roll(x, (-ws // 2, -ws // 2), dims=(2, 3))
            x = x.reshape(b, h, hh // ws, ws, ww // ws, ws, d).permute(0, 2, 4, 1, 3, 5, 6)
            return x.reshape(-1, h, ws * ws, d)
        o = F.scaled_dot_product_attention(part(q), part(k), part(v))
        o = o.reshape(b, hh // ws, ww // ws, h, ws, ws, d).permute(0, 3, 1, 4, 2, 5, 6).reshape(b, h, hh, ww, d)
        if shift:
            o = torch.roll(o, (ws // 2, ws // 2), dims=(2, 3))
        return o
    return f


def _gathered_regions(q, k, v):
    """BiFormer's official scheme up to the attention: region partition, top-k routing, the routed K/V gathered
    (top-k copies). (B, h, H, W, D) -> q regions (B, h, R, T, D), keys and values (B, h, R, topk * T, D)."""
    b, h, hh, ww, d = q.shape
    n = N_WIN
    rh, rw = hh // n, ww // n
    idx = route_regions(q, k, n, TOPK)                                      # (B, R, topk)

    def regions(x):
        return x.reshape(b, h, n, rh, n, rw, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, h, n * n, rh * rw, d)
    qr, kr, vr = regions(q), regions(k), regions(v)
    bi = torch.arange(b, device=q.device)[:, None, None]
    kg = kr.transpose(1, 2)[bi, idx].permute(0, 3, 1, 2, 4, 5).reshape(b, h, n * n, TOPK * rh * rw, d)
    vg = vr.transpose(1, 2)[bi, idx].permute(0, 3, 1, 2, 4, 5).reshape(b, h, n * n, TOPK * rh * rw, d)
    return qr, kg, vg


def biformer_gather(q, k, v):
    """BiFormer's official scheme: gather the routed K/V, then matmul attention in the input dtype (sizes divisible
    by n_win)."""
    qr, kg, vg = _gathered_regions(q, k, v)
    attn = torch.softmax((qr * q.shape[-1] ** -0.5) @ kg.transpose(-1, -2), dim=-1)
    return from_regions(attn @ vg, N_WIN, *q.shape[2:4])


def biformer_gather_sdpa(q, k, v):
    """The same gather with the attention written as ``scaled_dot_product_attention`` (the one-line change a user
    of the official code would make; flash attention over each region's gathered keys)."""
    qr, kg, vg = _gathered_regions(q, k, v)
    # 4D (B, h * R, tokens, D), as the official code's (n * p^2, heads, w^2, c) tensors are: SDPA's flash and
    # efficient kernels take 4D inputs only (a 5D call runs the math fallback)
    o = F.scaled_dot_product_attention(qr.flatten(1, 2), kg.flatten(1, 2), vg.flatten(1, 2))
    return from_regions(o.view(qr.shape), N_WIN, *q.shape[2:4])


def na1d_formula(n, kernel):
    """1D neighbourhood as a plain FlexAttention ``mask_mod`` (clamped centre, exactly ``kernel`` keys; n >= kernel)."""
    r = kernel // 2

    def mask(b_, h_, qi, ki):
        return (qi.clamp(r, n - 1 - r) - ki).abs() <= r
    return mask


def na2d_formula(hh, ww, kernel, dilation):
    """Exact 2D neighbourhood (NATTEN semantics, dilation) on the row-major sequence as a plain ``mask_mod``: the
    formula a user writes, no lookup tables. Each axis: same residue mod dilation, and the key's sub-grid index within
    ``kernel // 2`` of the query's clamped centre (each sub-grid side >= kernel)."""
    r, d = kernel // 2, dilation
    if min(hh, ww) // d < kernel:
        raise ValueError(f'na2d_formula needs every sub-grid side >= kernel, got {hh}x{ww}, dilation {d}')

    def axis(qc, kc, length):
        g = qc % d
        side = (length - g + d - 1) // d
        centre = torch.minimum((qc // d).clamp(min=r), side - 1 - r)
        return (kc % d == g) & ((centre - kc // d).abs() <= r)

    def mask(b_, h_, qi, ki):
        return axis(qi // ww, ki // ww, hh) & axis(qi % ww, ki % ww, ww)
    return mask


def dense_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def flex_masks(pattern, b, hh, ww, q=None, k=None):
    """(name, mask_mod, perm or None, batch-dependent) for FlexAttention; perm = our sequence order."""
    n = hh * ww
    dev = q.device
    out = []
    if pattern in ('window', 'window_shift'):
        off = WINDOW - WINDOW // 2 if pattern == 'window_shift' else 0
        out.append(('flex-hilbert', lambda b_, h_, qi, ki: (qi + off) // WINDOW == (ki + off) // WINDOW, None, False))
        if pattern == 'window':
            def sq(b_, h_, qi, ki):
                return ((qi // ww) // 8 == (ki // ww) // 8) & ((qi % ww) // 8 == (ki % ww) // 8)
            out.append(('flex-rowmajor', sq, 'rowmajor', False))
    elif pattern == 'band':
        out.append(('flex-hilbert', lambda b_, h_, qi, ki: (qi - ki).abs() <= BAND // 2, None, False))

        def box(b_, h_, qi, ki):
            return ((qi // ww - ki // ww).abs() <= 3) & ((qi % ww - ki % ww).abs() <= 3)
        out.append(('flex-rowmajor', box, 'rowmajor', False))
    elif pattern == 'na1d':
        out.append(('flex-hilbert', na1d_formula(n, NA1D), None, False))
    elif pattern in ('na2d', 'na2d_d4'):
        d = 1 if pattern == 'na2d' else 4
        p = patterns.na2d_pattern(hh, ww, NA2D_K, d, 64, 64, dev)
        qwin, tok = p.qwin.long(), p.tok.long()

        def na_seq(b_, h_, qi, ki):  # our sub-grid-major Hilbert order has no closed form: our own tables
            return ((tok[qi, 2] == tok[ki, 2]) & (tok[ki, 0] >= qwin[qi, 0]) & (tok[ki, 0] <= qwin[qi, 1])
                    & (tok[ki, 1] >= qwin[qi, 2]) & (tok[ki, 1] <= qwin[qi, 3]))
        out.append(('flex-hilbert', na_seq, p.perm, False))
        out.append(('flex-rowmajor', na2d_formula(hh, ww, NA2D_K, d), 'rowmajor', False))
    elif pattern == 'routing':
        layout = routing.routing_layout(hh, ww, N_WIN, 64, 64, dev)
        idx = route_regions(q, k, N_WIN, TOPK)
        route = torch.zeros(b, N_WIN ** 2, N_WIN ** 2, dtype=torch.bool, device=dev)
        route.scatter_(2, idx, True)
        reg_seq, reg_rm = layout.region, layout.region_rowmajor
        out.append(('flex-region', lambda b_, h_, qi, ki: route[b_, reg_seq[qi], reg_seq[ki]], layout.perm, True))
        out.append(('flex-rowmajor', lambda b_, h_, qi, ki: route[b_, reg_rm[qi], reg_rm[ki]], 'rowmajor', True))
    return out


AUTO_CONFIGS = [Config(64, 64, 4, 2), Config(64, 32, 4, 2), Config(128, 64, 8, 2)]


def pick_config(pattern, b, n, hh, ww, d, qkv, q2, k2):
    """Fastest forward+backward (GPU time) among AUTO_CONFIGS for this pattern and size."""
    best = None
    for cfg in AUTO_CONFIGS:
        f = ours(pattern, hh, ww, cfg)
        q, k, v = (t.detach().requires_grad_() for t in qkv)
        g = torch.randn_like(q)

        def fb():
            f(q, k, v).backward(g)
        fb()
        t = gpu_ms(fb, grads=[q, k, v])
        if best is None or t < best[0]:
            best = (t, cfg)
    return best[1]


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------
def run(args):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    import torch._dynamo
    # every (size, mask) recompiles flex; past dynamo's default limit it would silently run the dense eager path
    for name in ('cache_size_limit', 'recompile_limit', 'accumulated_cache_size_limit',
                 'accumulated_recompile_limit'):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    flex = torch.compile(flex_attention, dynamic=False)
    bw = copy_bandwidth()
    dev = torch.cuda.get_device_properties(0)
    meta = dict(device=dev.name, sms=dev.multi_processor_count, torch=torch.__version__,
                triton=__import__('triton').__version__, copy_gbs=bw / 1e9, dtype='bf16',
                command=' '.join(['python3'] + sys.argv))
    print(f"# {meta['device']} ({meta['sms']} SMs), torch {meta['torch']}, triton {meta['triton']}, bf16, "
          f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    rows = []
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)

    def save():
        with open(os.path.join(args.out, 'bench.json'), 'w') as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)

    for size in args.sizes.split(','):
        b, h, hh, ww, d = SIZES[size]
        n = hh * ww
        g = torch.Generator(device='cuda').manual_seed(0)
        q2, k2, v2 = (torch.randn(b, h, hh, ww, d, device='cuda', dtype=torch.bfloat16, generator=g)
                      for _ in range(3))
        seq = [t.reshape(b, h, n, d) for t in (q2, k2, v2)]
        floor_bytes = 4 * b * h * n * d * 2
        forced = Config(*map(int, args.config.split(','))) if args.config else None

        def add(pattern, impl, fwd, qkv, pairs, extra=None):
            if not any(impl.startswith(sel) for sel in args.impls.split(',')):
                return
            try:
                r = measure(fwd, qkv, pairs, floor_bytes, bw, d)
            except Exception as err:  # keep going: a failed baseline is a row with the error
                r = dict(error=f'{type(err).__name__}: {str(err)[:200]}')
                torch.cuda.empty_cache()
            r.update(size=size, shape=[b, h, hh, ww, d], pattern=pattern, impl=impl, **(extra or {}))
            rows.append(r)
            save()
            if 'error' in r:
                print(f'{size:3s} {pattern:12s} {impl:14s} ERROR {r["error"]}', flush=True)
            else:
                print(f"{size:3s} {pattern:12s} {impl:14s} gpu fwd {r['fwd_ms']:8.3f} f+b {r['fb_ms']:8.3f} ms | eager "
                      f"{r['eager_fwd_ms']:8.3f} / {r['eager_fb_ms']:8.3f} ms  "
                      f"{r['tflops_fwd']:6.1f}/{r['tflops_fb']:6.1f} TF/s  x_floor {r['x_floor_fwd']:5.1f}/"
                      f"{r['x_floor_fb']:5.1f}  peak {r['peak_mb']:8.1f} MB", flush=True)

        add('dense', 'sdpa', dense_sdpa, seq, b * h * n * n)
        for pattern in args.patterns.split(','):
            is2d = pattern in ('na2d', 'na2d_d4', 'routing')
            qkv = (q2, k2, v2) if is2d else seq
            cfg = forced or pick_config(pattern, b, n, hh, ww, d, qkv, q2, k2)
            p = our_pattern(pattern, b, n, hh, ww, cfg, q2, k2)
            add(pattern, 'ours', ours(pattern, hh, ww, cfg), qkv, computed_pairs(p, b, h), dict(config=str(cfg)))
            if pattern in ('window', 'window_shift'):
                add(pattern, 'win-part+sdpa', window_sdpa(pattern == 'window_shift'), (q2, k2, v2), b * h * n * 64)
            if pattern == 'routing':
                for name, fn in (('gather+matmul', biformer_gather), ('gather+sdpa', biformer_gather_sdpa)):
                    add(pattern, name, fn, (q2, k2, v2), b * h * n * TOPK * (hh // N_WIN) * (ww // N_WIN))
            if time.time() - t_start > args.flex_budget_s or 'flex' not in args.impls:
                continue
            for name, mod, perm, per_batch in flex_masks(pattern, b, hh, ww, q2, k2):
                try:
                    t0 = time.time()
                    bm = create_block_mask(mod, b if per_batch else None, None, n, n, device='cuda', _compile=True)
                    torch.cuda.synchronize()
                    t_mask = (time.time() - t0) * 1e3
                    t0 = time.time()
                    bm = create_block_mask(mod, b if per_batch else None, None, n, n, device='cuda', _compile=True)
                    torch.cuda.synchronize()
                    t_mask = min(t_mask, (time.time() - t0) * 1e3)
                    kvn = bm.kv_num_blocks.sum().item() + (bm.full_kv_num_blocks.sum().item()
                                                           if bm.full_kv_num_blocks is not None else 0)
                    pairs = kvn * 128 * 128 * (h if per_batch else b * h)
                except Exception as err:
                    rows.append(dict(size=size, pattern=pattern, impl=name, error=f'mask: {err}'[:200]))
                    continue
                if perm is None:
                    fq = seq
                elif isinstance(perm, str):
                    fq = seq
                else:
                    fq = [t.index_select(2, perm).contiguous() for t in seq]
                add(pattern, name, lambda q, k, v, bm=bm: flex(q, k, v, block_mask=bm), fq, pairs,
                    dict(mask_build_ms=t_mask))
    save()
    report(rows, meta, args.out)


def report(rows, meta, out):
    """Print the table (with speedups of ours) and draw the chart."""
    ours_rows = {(r['size'], r['pattern']): r for r in rows if r.get('impl') == 'ours' and 'error' not in r}
    print('\n| size | pattern | impl | GPU ms fwd | GPU ms fwd+bwd | eager ms fwd / fwd+bwd | TFLOP/s f / f+b | '
          'x HBM floor f / f+b | peak MB | ours speedup (GPU) f / f+b |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        if 'error' in r:
            print(f"| {r['size']} | {r['pattern']} | {r['impl']} | error: {r['error'][:60]} | | | | | | |")
            continue
        o = ours_rows.get((r['size'], r['pattern']))
        sp = f"{r['fwd_ms'] / o['fwd_ms']:.2f} / {r['fb_ms'] / o['fb_ms']:.2f}" if o and r['impl'] != 'ours' else ''
        print(f"| {r['size']} | {r['pattern']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fb_ms']:.3f} | "
              f"{r['eager_fwd_ms']:.3f} / {r['eager_fb_ms']:.3f} | "
              f"{r['tflops_fwd']:.0f} / {r['tflops_fb']:.0f} | {r['x_floor_fwd']:.1f} / {r['x_floor_fb']:.1f} | "
              f"{r['peak_mb']:.0f} | {sp} |")
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return
    groups = sorted({(r['size'], r['pattern']) for r in rows if r['pattern'] != 'dense' and 'error' not in r})
    impls = sorted({r['impl'] for r in rows if r['impl'] != 'ours' and 'error' not in r})
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 0.6), 5))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, key in enumerate(groups):
            r = next((r for r in rows if (r['size'], r['pattern']) == key and r['impl'] == impl
                      and 'error' not in r), None)
            if r is None:
                dense = next((r for r in rows if r['size'] == key[0] and r['impl'] == 'sdpa'), None)
                r = dense if impl == 'sdpa' else None
            o = ours_rows.get(key)
            if r is not None and o is not None:
                xs.append(j + i * width)
                ys.append(r['fb_ms'] / o['fb_ms'])
        ax.bar(xs, ys, width, label=impl)
    ax.axhline(1.0, color='k', lw=0.8)
    ax.set_yscale('log')
    ax.set_xticks([j + 0.4 for j in range(len(groups))])
    ax.set_xticklabels([f'{s}\n{p}' for s, p in groups], fontsize=7, rotation=90)
    ax.set_ylabel('baseline GPU time / ours (fwd+bwd), log')
    ax.set_title(f"block-sparse Triton core vs baselines, {meta['device']}, bf16")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'bench.png'), dpi=110)


def merge(paths, out):
    """Rows of several runs in one table: keyed by (size, pattern, impl), later files win; sizes, then patterns in
    the benchmark's order."""
    rows, metas = {}, []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        metas.append(data['meta'])
        for r in data['rows']:
            rows[(r['size'], r['pattern'], r['impl'])] = r
    order = {p: i for i, p in enumerate(('dense',) + tuple(PATTERNS))}
    merged = sorted(rows.values(), key=lambda r: (r['size'], order.get(r['pattern'], 99)))
    meta = dict(metas[-1], merged_from=[m.get('command') for m in metas])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'bench.json'), 'w') as f:
        json.dump(dict(meta=meta, rows=merged), f, indent=1)
    report(merged, meta, out)


def tune(args):
    """Time every config of the search space for each pattern at each size (fwd and fwd+bwd)."""
    bw = copy_bandwidth()
    rows = []
    os.makedirs(args.out, exist_ok=True)
    for size in args.sizes.split(','):
        b, h, hh, ww, d = SIZES[size]
        n = hh * ww
        q2, k2, v2 = (torch.randn(b, h, hh, ww, d, device='cuda', dtype=torch.bfloat16) for _ in range(3))
        seq = [t.reshape(b, h, n, d) for t in (q2, k2, v2)]
        for pattern in args.patterns.split(','):
            is2d = pattern in ('na2d', 'na2d_d4', 'routing')
            for cfg in (configs_for(d, interpret=False) if args.tune_all else TUNE_SHORTLIST):
                try:
                    p = our_pattern(pattern, b, n, hh, ww, cfg, q2, k2)
                    r = measure(ours(pattern, hh, ww, cfg), (q2, k2, v2) if is2d else seq,
                                computed_pairs(p, b, h), 4 * b * h * n * d * 2, bw, d)
                except Exception as err:
                    r = dict(error=str(err)[:200])
                r.update(size=size, pattern=pattern, config=str(cfg))
                rows.append(r)
                print(f"{size} {pattern:12s} {str(cfg):16s} " + (
                    f"fwd {r['fwd_ms']:.3f} f+b {r['fb_ms']:.3f}" if 'error' not in r else r['error']), flush=True)
        with open(os.path.join(args.out, 'tune.json'), 'w') as f:
            json.dump(rows, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='bench_out')
    ap.add_argument('--sizes', default='s1,s2,s3,s4')
    ap.add_argument('--patterns', default=','.join(PATTERNS))
    ap.add_argument('--flex-budget-s', type=float, default=420.0,
                    help='stop starting FlexAttention baselines after this many seconds (compile time)')
    ap.add_argument('--config', default='', help='force our config: block_m,block_n,num_warps,num_stages '
                    '(default: the fastest of AUTO_CONFIGS per size and pattern)')
    ap.add_argument('--impls', default='ours,sdpa,win-part,gather,flex',
                    help='comma list of implementation name prefixes to run')
    ap.add_argument('--merge', nargs='+', metavar='BENCH_JSON',
                    help='no measuring: merge bench.json files of earlier runs (a later file replaces rows of the '
                         'same size, pattern and impl), print the table and draw the chart into --out')
    ap.add_argument('--tune', action='store_true')
    ap.add_argument('--tune-all', action='store_true', help='tune over the whole search space, not the shortlist')
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    if not torch.cuda.is_available():
        raise SystemExit('benchmark_attention.py needs a CUDA device')
    tune(args) if args.tune else run(args)


if __name__ == '__main__':
    main()
