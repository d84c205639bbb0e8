"""Graph replay of a backbone's blocks: our ``block_graphs`` against PyTorch's own mechanisms, in one run.

For each model, fwd+bwd of one training step (bf16 autocast, default stochastic depth) at a fixed size, median of
``--iters`` steps, wall time (host clock around a synchronised step) and GPU time (CUDA events), peak memory:

- ``eager``: the fused Triton blocks without graphs (``cuda_graphs=False``);
- ``block_graphs``: the same blocks replayed by ``backbones/layers/block_graphs.py`` (``cuda_graphs=True``);
- ``make_graphed``: the same blocks, each stage's block chain wrapped by ``torch.cuda.make_graphed_callables``
  (one graphed callable per stage, the weight cast inside it; stem, downsamplers and norms eager);
- ``compile``: ``torch.compile(backbone)`` (default mode), ``cuda_graphs=False``;
- ``reduce-overhead``: ``torch.compile(backbone, mode='reduce-overhead')`` (CUDA graph trees), ``cuda_graphs=False``.

Under ``torch.compile`` the blocks leave the fused node (it refuses compile) for the module composition over the
Triton attention op: that is what a user who compiles the backbone gets today.

    python tools/benchmark_graphs.py --models HWT-T BiFormer-S NAT-T --size 1024x1024 --batch 2

Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import functools
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
}
MODES = ('eager', 'block_graphs', 'make_graphed', 'compile', 'reduce-overhead')


def build(cfg: dict, graphs: bool) -> nn.Module:
    import backbones  # noqa: F401  (registers ours)
    from mmengine.registry import MODELS as ROOT
    return ROOT.build(dict(cfg, cuda_graphs=graphs))


class _StageChain(nn.Module):
    """The blocks of one HWT stage as one module, tokens ``(B, N, C) -> (B, N, C)`` of an ``hw`` map, for
    ``make_graphed_callables``; the Linear weights are cast inside it, so their gradients reach the fp32 parameters
    through the graph."""

    def __init__(self, blocks: nn.ModuleList, hw: tuple[int, int]) -> None:
        super().__init__()
        self.blocks, self.hw = blocks, hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from backbones.layers.linear import cast_linear_weights
        with cast_linear_weights(self):
            for blk in self.blocks:
                x = blk(x, self.hw)
        return x


def _record(stage, seen: list, x: torch.Tensor, call=None) -> torch.Tensor:
    from backbones.layers import to_hilbert
    seen.append(((x.shape[1], x.shape[2]), to_hilbert(x, channels_last=True).detach().requires_grad_(True)))
    return type(stage).run_blocks(stage, x, call)


def _replay(graphed, x: torch.Tensor, call=None) -> torch.Tensor:
    from backbones.layers import from_hilbert, to_hilbert
    return from_hilbert(graphed(to_hilbert(x, channels_last=True)), (x.shape[1], x.shape[2]), channels_last=True)


def graph_stages(model: nn.Module, x: torch.Tensor) -> None:
    """Replace each HWT stage's block loop with one ``torch.cuda.make_graphed_callables`` callable captured for
    the input ``x (B, 3, H, W)`` (one eager pass first records every stage's token input)."""
    from backbones import HWT
    if not isinstance(model, HWT):
        raise ValueError(f'make_graphed is wired for HWT only, not {type(model).__name__}')
    stages, seen = list(model.layers), []
    for st in stages:
        st.run_blocks = functools.partial(_record, st, seen)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        model(x)
    chains = tuple(_StageChain(st.blocks, hw) for st, (hw, _) in zip(stages, seen))
    with torch.autocast('cuda', dtype=torch.bfloat16, cache_enabled=False):
        graphed = torch.cuda.make_graphed_callables(chains, tuple((t,) for _, t in seen))
    for st, g in zip(stages, graphed):
        st.run_blocks = functools.partial(_replay, g)


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
    model = build(MODELS[name], graphs=mode == 'block_graphs').cuda().train()
    runner = model
    t0 = time.perf_counter()
    try:
        if mode == 'make_graphed':
            graph_stages(model, x)
        elif mode == 'compile':
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
            if mode == 'make_graphed' and m != 'HWT-T':
                continue
            rows.append(run_mode(m, mode, x, args))
            print(rows[-1], flush=True)       # the table comes last; a row as soon as it is measured
    print(f'\n# {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.size} batch {args.batch}, bf16 '
          f'fwd+bwd, median of {args.iters}')
    print('| model | mode | wall ms | GPU ms | peak MiB | vs block_graphs (wall) | note |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        ref = next((q['wall_ms'] for q in rows if q['model'] == r['model'] and q['mode'] == 'block_graphs'),
                   float('nan'))
        print(f"| {r['model']} | {r['mode']} | {r['wall_ms']:.1f} | {r['gpu_ms']:.1f} | {r['peak_mib']:.0f} | "
              f"{ref / r['wall_ms']:.2f}x | {r.get('note', '')} |")


if __name__ == '__main__':
    main()
