"""Host (CPU) cost of the attention op on a CUDA device: where an eager call's time goes when the GPU is not the limit.

Issue 23's host target is one attention call (fwd+bwd) in at most 100 us of host time. Rows, each the median host
time of one call (``time.perf_counter`` around the call, no synchronisation inside the timed region; the queue is
drained every 50 calls), bf16, window 64 on s1 of ``tools/benchmark_attention.py`` (B 2, 4 heads, 128 x 128, D 32):

- a trivial Triton launch (3 arguments): the floor of any Triton kernel launched from Python;
- ``torch.empty`` of 1M bf16 elements: one allocation from the caching allocator;
- ``block_sparse_fwd``, the forward launcher alone (its two launches: first pass + exact NaN pass);
- the public ``hilbert_window_attention`` forward under ``no_grad`` and forward + backward (autograd included);
- ``qkv_attention`` routing (n_win 8, top-4) forward + backward on the packed ``(B, H, W, 3C)`` qkv.

``--profile`` adds a ``cProfile`` listing (by own time) of 100 window and routing fwd+bwd calls: Triton's
``JITFunction.run`` and its per-argument ``native_specialize_impl`` against autograd and the allocations.

``--backbones HWT-T ...`` adds, per backbone, an unreplayed training step (``cuda_graphs=False``, bf16 autocast,
batch 2, fwd+bwd at ``--size``): its wall ms (median of 10 after 3, synchronised) and the host time spent inside
Triton's ``JITFunction.run`` over 5 steps (every launch timed: its share of the step, then per kernel the launches
per step, us per launch and arguments per launch, launch options such as ``num_warps`` included). What is left of
the wall time is PyTorch's ops, autograd and our Python.

Usage: python tools/host_cost.py [--profile] [--backbones HWT-T BiFormer-S ...] [--size 1024x1024]
(needs a CUDA device; exits with one line otherwise)
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os.path as osp
import pstats
import statistics
import sys
import time
from unittest import mock

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _timing import time_steps  # noqa: E402
from benchmark_backbone import MODELS as BACKBONES  # noqa: E402  (name -> config of our backbones)
from benchmark_backbone import fwd_bwd_step, prepare  # noqa: E402


def host_us(fn, n: int = 300) -> float:
    """Median host microseconds of ``fn()`` over ``n`` calls after 20 warm-up calls."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e6)
        if len(ts) % 50 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return statistics.median(ts)


def launch_share(name: str, size: tuple, batch: int = 2) -> str:
    """Markdown lines: one unreplayed fwd+bwd step of backbone ``name`` at ``size`` (H, W), its wall ms and the
    host time inside Triton's ``JITFunction.run`` (per kernel: launches / step, us / launch, arguments)."""
    from triton.runtime.jit import JITFunction
    torch.manual_seed(0)
    device = torch.device('cuda')
    model, _ = prepare(name, 'no-graphs', device)
    step = fwd_bwd_step(model, batch, size, device)
    wall = time_steps(step, device, warmup=3, iters=10)['wall_ms']
    per_kernel = collections.defaultdict(lambda: [0, 0.0, 0])       # launches, seconds, arguments
    run = JITFunction.run

    def timed_run(fn, *args, **kwargs):
        t = time.perf_counter()
        out = run(fn, *args, **kwargs)
        k = per_kernel[fn.fn.__name__]
        k[0], k[1], k[2] = k[0] + 1, k[1] + time.perf_counter() - t, len(args) + len(kwargs) - 2  # grid, warmup
        return out

    n = 5
    with mock.patch.object(JITFunction, 'run', timed_run):
        for _ in range(n):
            step()
    torch.cuda.synchronize()
    del model, step
    torch.cuda.empty_cache()
    triton_ms = sum(k[1] for k in per_kernel.values()) * 1e3 / n
    lines = [f'| {name} {size[1]}x{size[0]} | wall {wall:.1f} ms | Triton run() {triton_ms:.1f} ms '
             f'({100 * triton_ms / wall:.0f} %) | {sum(k[0] for k in per_kernel.values()) // n} launches |']
    for kernel, (count, sec, n_args) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1]):
        lines.append(f'| {kernel} | x{count // n} | {sec / count * 1e6:.1f} us / launch | {n_args} arguments |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--profile', action='store_true', help='add cProfile listings of the fwd+bwd calls')
    ap.add_argument('--backbones', nargs='*', default=[], choices=list(BACKBONES),
                    help='add the Triton launch share of an unreplayed training step of these backbones')
    ap.add_argument('--size', default='1024x1024', help='WxH of the backbone steps (default 1024x1024)')
    args = ap.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split('x'))[::-1]
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        print(f'host_cost.py: --size must look like 1024x1024, got {args.size!r}', file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print('host_cost.py: needs a CUDA device (host cost of GPU launches); none found', file=sys.stderr)
        return 2
    import triton
    import triton.language as tl

    import sparse_ops
    from sparse_ops import triton_api
    from sparse_ops.block_sparse_fwd import block_sparse_fwd

    @triton.jit
    def _copy(X, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(X + i, tl.load(X + i, mask=i < n), mask=i < n)

    x = torch.zeros(1024, device='cuda')
    b, h, side, d = 2, 4, 128, 32
    n = side * side
    q, k, v = (torch.randn(b, h, n, d, device='cuda', dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    p, cfg, _, _ = triton_api._window_plan(q, 64)
    g = torch.randn_like(q)
    qkv = torch.randn(b, side, side, 3 * h * d, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    go = torch.randn(b, side, side, h * d, device='cuda', dtype=torch.bfloat16)

    def window_fwd():
        with torch.no_grad():
            sparse_ops.hilbert_window_attention(q, k, v, 64)

    def window_fb():
        q.grad = k.grad = v.grad = None
        sparse_ops.hilbert_window_attention(q, k, v, 64).backward(g)

    def routing_fb():
        qkv.grad = None
        sparse_ops.qkv_attention(qkv, h, 'routing', 8, 4, backend='triton').backward(go)

    rows = [
        ('trivial Triton launch (3 arguments)', lambda: _copy[(1,)](x, 1024, BLOCK=1024)),
        ('torch.empty, 1M bf16', lambda: torch.empty(1 << 20, device='cuda', dtype=torch.bfloat16)),
        ('block_sparse_fwd launcher (2 launches)',
         lambda: block_sparse_fwd(q, k, v, p.kv_num, p.kv_idx, p.qwin, p.tok, p.route, None, p.rows, d ** -0.5,
                                  p.mask_mode, p.n_groups, cfg)),
        ('hilbert_window_attention fwd, no_grad', window_fwd),
        ('hilbert_window_attention fwd+bwd', window_fb),
        ('qkv_attention routing fwd+bwd', routing_fb),
    ]
    print(f'# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, bf16, '
          f'({b}, {h}, {side}x{side}, {d})')
    print('| call | host us (median of 300) |\n|---|---|')
    for name, fn in rows:
        print(f'| {name} | {host_us(fn):.1f} |')
    if args.profile:
        for name, fn in (('window fwd+bwd', window_fb), ('routing fwd+bwd', routing_fb)):
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(100):
                fn()
            pr.disable()
            torch.cuda.synchronize()
            out = io.StringIO()
            pstats.Stats(pr, stream=out).sort_stats('tottime').print_stats(18)
            print(f'\n## {name}, 100 calls\n{out.getvalue()}')
    if args.backbones:
        print('\n| unreplayed step (bf16, batch 2, fwd+bwd) | | | |\n|---|---|---|---|')
        for name in args.backbones:
            print(launch_share(name, size))
    return 0


if __name__ == '__main__':
    sys.exit(main())
