"""Backbone throughput and memory: fwd+bwd images/s and peak memory, bf16 autocast.

Every backbone runs on its fused path (``sparse_ops`` Triton kernels) and on its twin path
(the pure-PyTorch reference, ``sparse_ops.use_backend('torch')``) in the same run, side by side
with mmdet's stock ``SwinTransformer`` (Swin-T). Ratios, not absolute times, are the result.

    python tools/benchmark_backbone.py --sizes 512x512 1024x1024 1333x800 --batch 2 \
        --scaling 512x512 1024x1024 2048x2048 --json out.json --png out.png

Needs a CUDA device (it exits with a clear message otherwise, unless --device cpu is given
for a smoke run at tiny sizes).
"""
import argparse
import json
import platform
import statistics
import time

import torch

MODELS = {
    'HWT-T': dict(type='HWT', arch='tiny'),
    'HNT-T': dict(type='HNT', arch='tiny'),
    'BiFormer-S': dict(type='BiFormer', arch='small'),
    'NAT-T': dict(type='NAT', arch='tiny'),
    'DiNAT-T': dict(type='DiNAT', arch='tiny'),
}
SWIN_T = dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
              window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, patch_norm=True,
              out_indices=(0, 1, 2, 3), with_cp=False, convert_weights=False)


def parse_size(text):
    """'1333x800' -> (H=800, W=1333): sizes are given as WxH like mmdet's scales."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f'size must look like 1024x1024, got {text!r}') from err
    return h, w


def build(cfg):
    import backbones  # noqa: F401  (registers ours)
    import mmdet.models  # noqa: F401  (registers SwinTransformer)
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return DET_MODELS.build(dict(cfg))


def time_fwd_bwd(model, batch, size, device, iters, warmup):
    """Median seconds of one fwd+bwd step and the peak memory in MiB."""
    h, w = size
    x = torch.randn(batch, 3, h, w, device=device)
    model.train()
    times = []
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + iters):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
            outs = model(x)
        loss = sum(o.float().mean() for o in outs)
        loss.backward()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else float('nan')
    return statistics.median(times), peak


def profile(name, cfg, path, batch, size, device, args, top=12):
    """Print the ``top`` GPU kernels by total time over 2 profiled fwd+bwd steps (after ``args.warmup``), and the
    GPU-busy time (sum of kernel times) against the wall time of a step: busy << wall means launch-bound."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from sparse_ops import use_backend
    model = build(cfg).to(device)
    with use_backend(path):
        time_fwd_bwd(model, batch, size, device, 1, args.warmup)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
        with torch_profile(activities=acts) as prof:
            sec, _ = time_fwd_bwd(model, batch, size, device, 2, 0)
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in events) / 2 / 1e3
    n_kernels = sum(e.count for e in events) // 2
    print(f'\n## {name} ({path}) {size[1]}x{size[0]} batch {batch}: wall {sec * 1e3:.1f} ms/step (profiled), '
          f'GPU busy {busy:.1f} ms/step, {n_kernels} kernels/step')
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f'  {e.self_device_time_total / 2 / 1e3:8.2f} ms  x{e.count // 2:<5d} {e.key[:110]}')
    del model
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def measure(name, cfg, path, batch, size, device, args):
    from sparse_ops import use_backend
    model = build(cfg).to(device)
    try:
        with use_backend(path):
            sec, peak = time_fwd_bwd(model, batch, size, device, args.iters, args.warmup)
        row = dict(model=name, path=path, size=f'{size[1]}x{size[0]}', batch=batch,
                   img_per_s=batch / sec, ms=sec * 1e3, peak_mib=peak)
    except torch.OutOfMemoryError:
        row = dict(model=name, path=path, size=f'{size[1]}x{size[0]}', batch=batch,
                   img_per_s=float('nan'), ms=float('nan'), peak_mib=float('inf'), note='OOM')
    del model
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--sizes', nargs='+', type=parse_size,
                        default=[parse_size(s) for s in ('512x512', '1024x1024', '1333x800')])
    parser.add_argument('--scaling', nargs='*', type=parse_size,
                        default=[parse_size(s) for s in ('512x512', '1024x1024', '2048x2048')])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=1,
                        help='measure every (model, path) of a size this many times, round-robin, and keep the '
                             'median: the steps are host-bound, so a drift in the host speed otherwise lands on '
                             'whichever model runs at that moment')
    parser.add_argument('--no-twin', action='store_true', help='skip the twin (unfused) path')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--profile', action='store_true',
                        help='instead of timing: torch.profiler of 2 steps per model at the first size, printing '
                             'the busiest GPU kernels and GPU-busy time against wall time')
    parser.add_argument('--json')
    parser.add_argument('--png')
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark_backbone.py needs a CUDA device (pass --device cpu for a smoke run)')

    header = f'# {platform.node()} | {torch.cuda.get_device_name() if device.type == "cuda" else "cpu"} | ' \
             f'torch {torch.__version__} | batch {args.batch} | bf16 autocast | fwd+bwd median of {args.iters} steps'
    if args.rounds > 1:
        header += f' x {args.rounds} rounds (round-robin)'
    print(header, flush=True)
    fused = 'triton' if device.type == 'cuda' else 'torch'  # CPU smoke runs have no fused path
    if args.profile:
        for name, cfg in [('Swin-T (mmdet)', SWIN_T)] + [(m, MODELS[m]) for m in args.models]:
            profile(name, cfg, fused if name in MODELS else 'torch', args.batch, args.sizes[0], device, args)
        return
    paths = [fused] if args.no_twin or fused == 'torch' else ['triton', 'torch']
    if args.rounds < 1:
        raise SystemExit(f'--rounds must be >= 1, got {args.rounds}')
    rows = []
    for size in args.sizes:
        runs = [('Swin-T (mmdet)', SWIN_T, 'torch')] + [(n, MODELS[n], p) for n in args.models for p in paths]
        rounds = [[measure(name, cfg, path, args.batch, size, device, args) for name, cfg, path in runs]
                  for _ in range(args.rounds)]
        for measured in zip(*rounds):  # one (model, path) over the rounds
            row = dict(measured[0], ms=statistics.median(r['ms'] for r in measured),
                       peak_mib=max(r['peak_mib'] for r in measured), rounds_ms=[r['ms'] for r in measured])
            row['img_per_s'] = row['batch'] / row['ms'] * 1e3
            rows.append(row)
            print(rows[-1], flush=True)
    scaling = []
    for name in args.models:
        for size in args.scaling:
            scaling.append(measure(name, MODELS[name], fused, 1, size, device, args))
            print(scaling[-1], flush=True)

    print('\n' + header)
    print('| model | size | path | img/s | ms/step | peak MiB | vs Swin-T img/s | fused / twin |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        swin = next(s for s in rows if s['model'].startswith('Swin') and s['size'] == r['size'])
        twin = next((s for s in rows if s['model'] == r['model'] and s['size'] == r['size']
                     and s['path'] == 'torch'), None)
        ratio = r['img_per_s'] / twin['img_per_s'] if twin and r['path'] == 'triton' else float('nan')
        print(f"| {r['model']} | {r['size']} | {r['path']} | {r['img_per_s']:.1f} | {r['ms']:.1f} | "
              f"{r['peak_mib']:.0f} | {r['img_per_s'] / swin['img_per_s']:.2f} | {ratio:.2f} |")
    if scaling:
        print('\nScaling (batch 1, fused): ms per fwd+bwd and ms per 1M tokens (flat = linear)')
        print('| model | size | ms | ms / Mpx |')
        print('|---|---|---|---|')
        for r in scaling:
            w, h = (int(v) for v in r['size'].split('x'))
            print(f"| {r['model']} | {r['size']} | {r['ms']:.1f} | {r['ms'] / (h * w / 1e6):.1f} |")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(header=header, rows=rows, scaling=scaling), f, indent=1)
    if args.png:
        plot(rows, scaling, args.png)


def plot(rows, scaling, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = sorted({(r['model'], r['path']) for r in rows})
    sizes = list(dict.fromkeys(r['size'] for r in rows))
    width = 0.8 / len(labels)
    for i, (m, p) in enumerate(labels):
        vals = [next((r['img_per_s'] for r in rows if r['model'] == m and r['path'] == p
                      and r['size'] == s), 0) for s in sizes]
        a.bar([j + i * width for j in range(len(sizes))], vals, width, label=f'{m} ({p})')
    a.set_xticks([j + 0.4 for j in range(len(sizes))], sizes)
    a.set_ylabel('images/s (fwd+bwd)')
    a.legend(fontsize=6)
    for m in dict.fromkeys(r['model'] for r in scaling):
        pts = [r for r in scaling if r['model'] == m]
        px = [int(r['size'].split('x')[0]) * int(r['size'].split('x')[1]) / 1e6 for r in pts]
        b.plot(px, [r['ms'] for r in pts], 'o-', label=m)
    b.set_xlabel('megapixels')
    b.set_ylabel('ms per fwd+bwd (batch 1)')
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == '__main__':
    main()
