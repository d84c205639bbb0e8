"""Graph replay of a backbone's training step: ours (``make_graphed_callables``) against no graphs and
``torch.compile``, in one run.

For each model, fwd+bwd of one training step (bf16 autocast, default stochastic depth) at a fixed size, median of
``--iters`` steps, wall time (host clock around a synchronised step) and GPU time (CUDA events), peak memory:

- ``eager``: the fused Triton blocks without graphs (``cuda_graphs=False``);
- ``graphs``: the default, ``cuda_graphs=True``: the whole training step of the backbone replayed through
  ``torch.cuda.make_graphed_callables`` (``backbones/graphs.py``);
- ``compile``: ``torch.compile(backbone)`` (default mode), ``cuda_graphs=False``;
- ``reduce-overhead``: ``torch.compile(backbone, mode='reduce-overhead')`` (CUDA graph trees), ``cuda_graphs=False``.

Under ``torch.compile`` the blocks leave the fused node (it refuses compile) for the module composition over the
Triton attention op: that is what a user who compiles the backbone gets today.

    python tools/benchmark_graphs.py --models HWT-T BiFormer-S NAT-T DiNAT-T HNT-T --size 1024x1024 --batch 2

Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

MODELS = {
    'HWT-T': dict(type='HWT', arch='tiny'),
    'BiFormer-S': dict(type='BiFormer', arch='small'),
    'NAT-T': dict(type='NAT', arch='tiny'),
    'DiNAT-T': dict(type='DiNAT', arch='tiny'),
    'HNT-T': dict(type='HNT', arch='tiny'),
}
MODES = ('eager', 'graphs', 'compile', 'reduce-overhead')


def build(cfg: dict, graphs: bool) -> nn.Module:
    import backbones  # noqa: F401  (registers ours)
    from mmengine.registry import MODELS as ROOT
    return ROOT.build(dict(cfg, cuda_graphs=graphs))


def step_times(model, x, iters: int, warmup: int) -> tuple[float, float, float]:
    """Median wall ms, median GPU ms (CUDA events) of one fwd+bwd step, peak MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    wall, gpu = [], []
    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            outs = model(x)
        sum(o.float().mean() for o in outs).backward()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            wall.append((time.perf_counter() - t0) * 1e3)
            gpu.append(start.elapsed_time(end))
        for p in model.parameters():
            p.grad = None
    return statistics.median(wall), statistics.median(gpu), torch.cuda.max_memory_allocated() / 2 ** 20


def run_mode(name: str, mode: str, x: torch.Tensor, args) -> dict:
    torch.manual_seed(0)
    model = build(MODELS[name], graphs=mode == 'graphs').cuda().train()
    runner = model
    t0 = time.perf_counter()
    try:
        if mode == 'compile':
            runner = torch.compile(model)
        elif mode == 'reduce-overhead':
            runner = torch.compile(model, mode='reduce-overhead')
        wall, gpu, peak = step_times(runner, x, args.iters, args.warmup)
        row = dict(model=name, mode=mode, wall_ms=wall, gpu_ms=gpu, peak_mib=peak)
    except Exception as err:                # noqa: BLE001  (a mode that fails is a row of the table)
        row = dict(model=name, mode=mode, wall_ms=float('nan'), gpu_ms=float('nan'), peak_mib=float('nan'),
                   note=f'{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ""}')
    row['setup_s'] = time.perf_counter() - t0
    del model, runner
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['HWT-T'], choices=list(MODELS))
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES))
    parser.add_argument('--size', default='1024x1024', help='WxH')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('benchmark_graphs.py needs a CUDA device')
    w, h = (int(v) for v in args.size.lower().split('x'))
    x = torch.randn(args.batch, 3, h, w, device='cuda')
    rows = []
    for m in args.models:
        for mode in args.modes:
            rows.append(run_mode(m, mode, x, args))
            print(rows[-1], flush=True)       # the table comes last; a row as soon as it is measured
    print(f'\n# {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.size} batch {args.batch}, bf16 '
          f'fwd+bwd, median of {args.iters}')
    print('| model | mode | wall ms | GPU ms | peak MiB | vs graphs (wall) | note |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        ref = next((q['wall_ms'] for q in rows if q['model'] == r['model'] and q['mode'] == 'graphs'),
                   float('nan'))
        print(f"| {r['model']} | {r['mode']} | {r['wall_ms']:.1f} | {r['gpu_ms']:.1f} | {r['peak_mib']:.0f} | "
              f"{ref / r['wall_ms']:.2f}x | {r.get('note', '')} |")


if __name__ == '__main__':
    main()
