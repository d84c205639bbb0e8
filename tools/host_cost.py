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

Usage: python tools/host_cost.py [--profile]   (needs a CUDA device; exits with one line otherwise)
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os.path as osp
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--profile', action='store_true', help='add cProfile listings of the fwd+bwd calls')
    args = ap.parse_args(argv)
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
    return 0


if __name__ == '__main__':
    sys.exit(main())
