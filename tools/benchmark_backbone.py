"""Backbone throughput and memory: fwd+bwd images/s, wall and GPU time, peak memory, bf16 autocast.

Rows: each of our backbones in its ``default`` mode (fused ``sparse_ops`` Triton path, the backbone's defaults),
``no-graphs`` (same, ``cuda_graphs=False``), ``compile`` / ``reduce-overhead`` (``cuda_graphs=False`` under
``torch.compile`` in that mode: the module composition over the registered Triton attention op) and, on request,
``twin`` (the pure-PyTorch path, ``sparse_ops.use_backend('torch')``); mmdet's stock ``SwinTransformer`` (Swin-T)
``eager``, ``compile`` (``torch.compile(model)``) and ``reduce-overhead``
(``torch.compile(model, mode='reduce-overhead')``). Per row: wall ms (host clock around a synchronised step, launches
included) and GPU ms (CUDA events), medians of ``--iters`` steps after ``--warmup``; peak memory; "first step s" =
the first, untimed step (compilation, autotuning, graph capture).
A mode that fails is a row with its error note. The final table gives img/s against the fastest Swin-T mode and peak
memory against the Swin-T mode using the least, both at the same size. ``--varying``: 16 distinct sizes (H 480-800,
W 640-1333, multiples of 32, seed 0), one step each, ours (default) vs Swin-T eager, total wall time and img/s; then
the same 16 sizes once more ("again": per-size work done; no size comes twice in a row, so no graph is captured).
Ratios, not absolute times, are the result. ``--models`` / ``--modes`` split a run into several calls.

Issue 19 runs on one H200, each call well under 10 minutes (merge the JSON files; each has its own Swin-T rows):

    python tools/benchmark_backbone.py --sizes 1024x1024 1333x800 --models Swin-T \\
        --modes eager compile reduce-overhead --json bb_swin.json
    python tools/benchmark_backbone.py --sizes 1024x1024 1333x800 --models Swin-T HWT-T HNT-T \\
        --modes eager default no-graphs --json bb_hwt.json
    python tools/benchmark_backbone.py --sizes 1024x1024 1333x800 --models Swin-T BiFormer-S NAT-T DiNAT-T \\
        --modes eager default no-graphs --json bb_others.json
    python tools/benchmark_backbone.py --sizes --varying --models Swin-T HWT-T HNT-T BiFormer-S NAT-T DiNAT-T \\
        --json bb_varying.json

    python tools/benchmark_backbone.py --merge bb_swin.json bb_hwt.json bb_others.json bb_varying.json

(the last prints the tables together, ratios against the best Swin-T mode over all files). Needs a CUDA device (it exits
with a clear message otherwise, unless --device cpu is given for a smoke run at tiny sizes, e.g. ``--device cpu --sizes
64x64 --iters 1 --warmup 0``).
"""
import argparse
import json
import platform
import os.path as osp
import statistics
import sys

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _timing import time_steps  # noqa: E402

MODELS = {
    'HWT-T': dict(type='HWT', arch='tiny'),
    'HNT-T': dict(type='HNT', arch='tiny'),
    'BiFormer-S': dict(type='BiFormer', arch='small'),
    'NAT-T': dict(type='NAT', arch='tiny'),
    'DiNAT-T': dict(type='DiNAT', arch='tiny'),
}
SWIN = 'Swin-T'
OURS_MODES = ['default', 'no-graphs', 'compile', 'reduce-overhead', 'twin']
SWIN_MODES = ['eager', 'compile', 'reduce-overhead']
NAN = float('nan')
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
    """Ours from MMEngine's registry; mmdet (which needs a built mmcv) is imported only for the Swin-T baseline."""
    if cfg['type'] != SWIN_T['type']:
        import backbones  # noqa: F401  (registers ours)
        from mmengine.registry import MODELS as ENGINE_MODELS
        return ENGINE_MODELS.build(dict(cfg))
    import mmdet.models  # noqa: F401  (registers SwinTransformer)
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return DET_MODELS.build(dict(cfg))


def fwd_bwd_step(model, batch, size, device, seed=0):
    """A closure running one fwd+bwd step of ``model`` on a random (batch, 3, H, W) input under bf16 autocast."""
    h, w = size
    x = torch.randn(batch, 3, h, w, device=device, generator=torch.Generator(device).manual_seed(seed))
    model.train()

    def step():
        if getattr(model, 'mark_cudagraph_step', False):  # reduce-overhead: a new step may reuse graph outputs
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
            outs = model(x)
        sum(o.float().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)
    return step


def time_fwd_bwd(model, batch, size, device, iters, warmup):
    """Median wall seconds of one fwd+bwd step and the peak memory in MiB (used by ``profile``)."""
    r = time_steps(fwd_bwd_step(model, batch, size, device), device, warmup, iters)
    return r['wall_ms'] / 1e3, r['peak_mib']


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


def prepare(name, mode, device):
    """The model of row (name, mode) on ``device`` and the ``sparse_ops`` backend it runs under.

    Ours: ``default`` (fused Triton path, the backbone's defaults), ``no-graphs`` (fused, ``cuda_graphs=False``),
    ``compile`` / ``reduce-overhead`` (``cuda_graphs=False``, compiled as below), ``twin`` (pure-PyTorch path).
    Swin-T: ``eager``, ``compile`` (``torch.compile(model)``) and ``reduce-overhead``
    (``torch.compile(model, mode='reduce-overhead')``, CUDA graphs by Inductor)."""
    fused = 'triton' if device.type == 'cuda' else 'torch'  # CPU smoke runs have no fused path
    compiled = mode in ('compile', 'reduce-overhead')
    if name == SWIN:
        model = build(SWIN_T).to(device)
    else:
        model = build(dict(MODELS[name], **(dict(cuda_graphs=False) if mode != 'default' else {}))).to(device)
    if compiled:
        model = torch.compile(model, **({} if mode == 'compile' else dict(mode=mode)))
        model.mark_cudagraph_step = mode == 'reduce-overhead'
    return model, 'torch' if name == SWIN or mode == 'twin' else fused


def measure(name, mode, batch, size, device, args):
    """One table row: wall and GPU ms per fwd+bwd step (medians), img/s by wall time, peak MiB, and the wall
    seconds of the first step (compilation, autotuning, graph capture), which the timed steps do not include.
    A failure (OOM, a compile error) is a row with a ``note`` instead of numbers."""
    from sparse_ops import use_backend
    row = dict(model=name, mode=mode, size=f'{size[1]}x{size[0]}', batch=batch)
    model = None
    try:
        model, path = prepare(name, mode, device)
        with use_backend(path):
            step = fwd_bwd_step(model, batch, size, device)
            row['first_s'] = time_steps(step, device, 0, 1)['wall_ms'] / 1e3
            r = time_steps(step, device, args.warmup, args.iters)
        row.update(wall_ms=r['wall_ms'], gpu_ms=r['gpu_ms'], img_per_s=batch / r['wall_ms'] * 1e3,
                   peak_mib=r['peak_mib'])
    except Exception as err:  # noqa: BLE001  (the row says what failed; the other rows still run)
        row.update(wall_ms=NAN, gpu_ms=NAN, img_per_s=NAN, peak_mib=NAN,
                   note='OOM' if isinstance(err, torch.OutOfMemoryError)
                   else f'{type(err).__name__}: {str(err).strip().splitlines()[0][:100] if str(err).strip() else ""}')
    del model
    torch._dynamo.reset()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return row


def varying_sizes(n=16, seed=0):
    """``n`` distinct (H, W): H in 480..800, W in 640..1333, multiples of 32, drawn with a fixed seed."""
    import random
    grid = [(h, w) for h in range(480, 801, 32) for w in range(640, 1334, 32)]
    return random.Random(seed).sample(grid, n)


def measure_varying(name, mode, batch, sizes, device):
    """Wall seconds for one fwd+bwd step at each of ``sizes`` in turn (after one untimed step at 512x512, outside
    the set, so one-time start-up is not counted but per-size work such as autotuning, new Triton specialisations,
    pattern tables or graph capture is): ``total_s``. Then the same sizes once more, one step each: ``again_s``
    (every size seen once before, as in a multi-scale training run after its first sizes recur)."""
    from sparse_ops import use_backend
    row = dict(model=name, mode=mode, size=f'{len(sizes)} sizes', batch=batch)
    try:
        model, path = prepare(name, mode, device)
        with use_backend(path):
            fwd_bwd_step(model, batch, (512, 512), device)()
            t, again = (time_steps(lambda: [fwd_bwd_step(model, batch, s, device)() for s in sizes], device, 0, 1)
                        for _ in range(2))
        row.update(total_s=t['wall_ms'] / 1e3, gpu_ms=t['gpu_ms'], img_per_s=batch * len(sizes) / t['wall_ms'] * 1e3,
                   peak_mib=max(t['peak_mib'], again['peak_mib']), again_s=again['wall_ms'] / 1e3)
        del model
    except Exception as err:  # noqa: BLE001
        row.update(total_s=NAN, img_per_s=NAN, note=f'{type(err).__name__}: {str(err).strip()[:100]}')
    torch._dynamo.reset()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return row


def format_table(rows):
    """Markdown table of the fixed-size rows; ratios against the fastest Swin-T mode (img/s) and the Swin-T mode
    with the least peak memory at the same size."""
    lines = ['| model | mode | size | wall ms | GPU ms | img/s | peak MiB | first step s | vs Swin-T best img/s | '
             'vs Swin-T least MiB | note |', '|' + '---|' * 11]
    for r in rows:
        swin = [s for s in rows if s['model'] == SWIN and s['size'] == r['size'] and s['img_per_s'] == s['img_per_s']]
        best = max((s['img_per_s'] for s in swin), default=NAN)
        least = min((s['peak_mib'] for s in swin), default=NAN)
        lines.append(f"| {r['model']} | {r['mode']} | {r['size']} | {r['wall_ms']:.1f} | {r['gpu_ms']:.1f} | "
                     f"{r['img_per_s']:.1f} | {r['peak_mib']:.0f} | {r.get('first_s', NAN):.1f} | "
                     f"{r['img_per_s'] / best:.2f} | {r['peak_mib'] / least:.2f} | {r.get('note', '')} |")
    return '\n'.join(lines)


def format_varying(rows):
    """Markdown table of the varying-size rows, ratios against Swin-T eager: the first pass (every size new) and
    the second (the same sizes again; NaN in JSON files from before it was measured)."""
    swin = next((r for r in rows if r['model'] == SWIN), dict(img_per_s=NAN, again_s=NAN))
    lines = ['| model | mode | sizes | total s | img/s | vs Swin-T eager | again s | again: vs Swin-T eager | note |',
             '|' + '---|' * 9]
    lines += [f"| {r['model']} | {r['mode']} | {r['size']} | {r['total_s']:.2f} | {r['img_per_s']:.1f} | "
              f"{r['img_per_s'] / swin['img_per_s']:.2f} | {r.get('again_s', NAN):.2f} | "
              f"{swin.get('again_s', NAN) / r.get('again_s', NAN):.2f} | {r.get('note', '')} |" for r in rows]
    return '\n'.join(lines)


def _first_of_each(rows):
    """``rows`` with only the first row of each (model, mode, size): split runs each measure Swin-T eager."""
    seen = set()
    return [r for r in rows if not ((r['model'], r['mode'], r['size']) in seen
                                    or seen.add((r['model'], r['mode'], r['size'])))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=[SWIN] + list(MODELS), choices=[SWIN] + list(MODELS),
                        help=f'{SWIN} is the stock mmdet baseline; leave it in for the ratios')
    parser.add_argument('--modes', nargs='+', default=[m for m in OURS_MODES + SWIN_MODES if m != 'twin'],
                        choices=list(dict.fromkeys(OURS_MODES + SWIN_MODES)),
                        help=f'ours: {", ".join(OURS_MODES)}; {SWIN}: {", ".join(SWIN_MODES)}')
    parser.add_argument('--sizes', nargs='*', type=parse_size,
                        default=[parse_size(s) for s in ('1024x1024', '1333x800')])
    parser.add_argument('--varying', action='store_true',
                        help='also: 16 distinct sizes (H 480-800, W 640-1333, multiples of 32, seed 0), one step '
                             f'each, ours (default) vs {SWIN} eager')
    parser.add_argument('--scaling', nargs='*', type=parse_size, default=[],
                        help='batch-1 scaling run of ours (default mode) at these sizes')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=1,
                        help='measure every (model, mode) of a size this many times, round-robin, and keep the '
                             'median: the steps are partly host-bound, so a drift in the host speed otherwise lands '
                             'on whichever model runs at that moment')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--profile', action='store_true',
                        help='instead of timing: torch.profiler of 2 steps per model at the first size, printing '
                             'the busiest GPU kernels and GPU-busy time against wall time')
    parser.add_argument('--json')
    parser.add_argument('--png')
    parser.add_argument('--merge', nargs='+', metavar='JSON',
                        help='measure nothing: print the tables of these --json files together (a run split over '
                             'several calls), ratios against the best Swin-T mode of all of them')
    args = parser.parse_args(argv)
    if args.merge:
        runs = [json.load(open(p)) for p in args.merge]
        for run in runs:
            print(run['header'])
        rows, varying = _first_of_each([r for run in runs for r in run['rows']]), \
            _first_of_each([r for run in runs for r in run.get('varying', [])])
        print(format_table(rows))
        if varying:
            print('\n' + format_varying(varying))
        return
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark_backbone.py needs a CUDA device (pass --device cpu for a smoke run)')
    if args.rounds < 1 or args.iters < 1 or args.warmup < 0:
        raise SystemExit(f'need --rounds >= 1, --iters >= 1, --warmup >= 0; got {args.rounds=} {args.iters=} '
                         f'{args.warmup=}')

    header = f'# {platform.node()} | {torch.cuda.get_device_name() if device.type == "cuda" else "cpu"} | ' \
             f'torch {torch.__version__} | batch {args.batch} | bf16 autocast | fwd+bwd median of {args.iters} ' \
             f'steps after {args.warmup} warm-up (wall: host clock around synchronised steps; GPU: CUDA events)'
    if args.rounds > 1:
        header += f' x {args.rounds} rounds (round-robin)'
    print(header, flush=True)
    if args.profile:
        for name in args.models:
            cfg, path = (SWIN_T, 'torch') if name == SWIN else (MODELS[name], 'triton' if device.type == 'cuda'
                                                               else 'torch')
            profile(name, cfg, path, args.batch, args.sizes[0], device, args)
        return
    runs = [(n, m) for n in args.models for m in (SWIN_MODES if n == SWIN else OURS_MODES) if m in args.modes]
    rows = []
    for size in args.sizes:
        rounds = [[measure(name, mode, args.batch, size, device, args) for name, mode in runs]
                  for _ in range(args.rounds)]
        for measured in zip(*rounds):  # one (model, mode) over the rounds
            row = dict(measured[0], **{k: statistics.median(r[k] for r in measured)
                                       for k in ('wall_ms', 'gpu_ms')})
            row.update(peak_mib=max(r['peak_mib'] for r in measured), rounds_ms=[r['wall_ms'] for r in measured],
                       img_per_s=row['batch'] / row['wall_ms'] * 1e3)
            rows.append(row)
            print(row, flush=True)
    varying = []
    if args.varying:
        sizes = varying_sizes()
        print(f'varying sizes (HxW): {sizes}', flush=True)
        for name in args.models:
            varying.append(measure_varying(name, 'eager' if name == SWIN else 'default', args.batch, sizes, device))
            print(varying[-1], flush=True)
    scaling = []
    for name in [n for n in args.models if n != SWIN]:
        for size in args.scaling:
            scaling.append(measure(name, 'default', 1, size, device, args))
            print(scaling[-1], flush=True)

    print('\n' + header)
    if rows:
        print(format_table(rows))
    if varying:
        print(f'\nVarying sizes (batch {args.batch}, one step per size, wall time):')
        print(format_varying(varying))
    if scaling:
        print('\nScaling (batch 1, default mode): ms per fwd+bwd and ms per 1M pixels (flat = linear)')
        print('| model | size | ms | ms / Mpx |')
        print('|---|---|---|---|')
        for r in scaling:
            w, h = (int(v) for v in r['size'].split('x'))
            print(f"| {r['model']} | {r['size']} | {r['wall_ms']:.1f} | {r['wall_ms'] / (h * w / 1e6):.1f} |")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(header=header, rows=rows, varying=varying, scaling=scaling), f, indent=1)
    if args.png:
        plot(rows, scaling, args.png)


def plot(rows, scaling, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = sorted({(r['model'], r['mode']) for r in rows})
    sizes = list(dict.fromkeys(r['size'] for r in rows))
    width = 0.8 / len(labels)
    for i, (m, p) in enumerate(labels):
        vals = [next((r['img_per_s'] for r in rows if r['model'] == m and r['mode'] == p
                      and r['size'] == s), 0) for s in sizes]
        a.bar([j + i * width for j in range(len(sizes))], vals, width, label=f'{m} ({p})')
    a.set_xticks([j + 0.4 for j in range(len(sizes))], sizes)
    a.set_ylabel('images/s (fwd+bwd)')
    a.legend(fontsize=6)
    for m in dict.fromkeys(r['model'] for r in scaling):
        pts = [r for r in scaling if r['model'] == m]
        px = [int(r['size'].split('x')[0]) * int(r['size'].split('x')[1]) / 1e6 for r in pts]
        b.plot(px, [r['wall_ms'] for r in pts], 'o-', label=m)
    b.set_xlabel('megapixels')
    b.set_ylabel('ms per fwd+bwd (batch 1)')
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == '__main__':
    main()
