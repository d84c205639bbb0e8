"""Inference FPS, training step time and peak memory of detectors / segmentors, several configs side by side.

Synthetic inputs of a fixed size (no dataset needed; the table's HxW columns give the size the model received
after the data preprocessor, which pads: mmseg's to the config's crop in training): random images and, for
training, random ground truth (boxes with rectangular masks for mmdet, a random label map for mmseg). Per config
and phase (inference in ``predict`` mode; a training step = loss, backward, AdamW step): warm-up, then timed
iterations (``_timing.time_steps``: median wall ms, host clock around synchronised steps, next to GPU ms from CUDA
events) and the phase's peak memory (``torch.cuda.max_memory_allocated`` on GPU; on CPU the process' peak RSS,
which only grows). Where the training step goes: after the training phase the backbone alone runs fwd+bwd on the
same preprocessed input (same autocast, loss = sum of its outputs' means), timed the same way; "rest" = train step
- backbone = neck, heads, losses, target assignment and the optimizer step. (A separate run rather than hooks inside
the step: hooks would add synchronisation to the step they measure.) Configs are paths or stock configs of the
installed packages as ``mmdet::...`` / ``mmseg::...`` (their backbone's pretrained ``init_cfg`` is dropped: no
download). ``--profile N`` then profiles N training steps by part (``_profile_step``: host and GPU ms per part,
GPU busy time against wall time). ``--compile-backbone`` wraps each model's backbone in ``torch.compile`` (default mode;
compiled during the warm-up iterations). Prints one table with a machine header; ``--out`` writes JSON, ``--chart`` a
PNG bar chart.

    python tools/benchmark.py CONFIG [CONFIG ...] [--shape 1024 1024] [--batch-size 2] [--mode both]
        [--amp fp16] [--iters 20] [--warmup 5] [--device cuda] [--compile-backbone] [--out bench.json]
        [--chart bench.png] [--profile N] [--cfg-options k=v ...]

Issue 19's training-step runs (one H200, AMP, batch 2; each call well under 10 minutes; ours vs stock Swin-T eager,
then Swin-T with its backbone compiled):

    SWIN_DET=mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py
    SWIN_SEG=mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py
    T="--mode train --batch-size 2 --amp fp16 --iters 20 --warmup 5"
    python tools/benchmark.py configs/hwt/mask-rcnn_hwt-t_fpn_1x_coco.py $SWIN_DET --shape 800 1333 $T --out st_det.json
    python tools/benchmark.py $SWIN_DET --shape 800 1333 $T --compile-backbone --out st_det_c.json
    python tools/benchmark.py configs/hwt/mask-rcnn_hwt-t_fpn_1x_coco-2048.py $SWIN_DET --shape 1280 2048 $T \\
        --out st_det2048.json
    python tools/benchmark.py $SWIN_DET --shape 1280 2048 $T --compile-backbone --out st_det2048_c.json
    python tools/benchmark.py configs/hwt/upernet_hwt-t_8xb2-160k_ade20k-512x512.py $SWIN_SEG --shape 512 512 $T \\
        --out st_seg512.json
    python tools/benchmark.py $SWIN_SEG --shape 512 512 $T --compile-backbone --out st_seg512_c.json
    python tools/benchmark.py configs/hwt/upernet_hwt-t_8xb2-160k_ade20k-1024x1024.py $SWIN_SEG --shape 1024 1024 $T \\
        --out st_seg1024.json
    python tools/benchmark.py $SWIN_SEG --shape 1024 1024 $T --compile-backbone --out st_seg1024_c.json

(The 2048-px config trains at long side 1600..2048 and tests at 2048 x 1280, hence ``--shape 1280 2048``. The
stock Swin-T UperNet config has a 512 crop; at ``--shape 1024 1024`` its preprocessor leaves the 1024 input as is,
which the table's HxW column shows.)

Example (stock UperNet vs our routing-context UperHead at 1024^2 on a GPU):

    python tools/benchmark.py configs/hwt/upernet_hwt-t_8xb2-160k_ade20k-512x512.py \\
        configs/heads/upernet-routing_hwt-t_8xb2-160k_ade20k-512x512.py --shape 1024 1024 --batch-size 2 --amp fp16

Also imported by ``tools/get_flops.py`` (``load_cfg``, ``build_model``, ``synthetic_batch``).
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import platform
import statistics
import sys
from contextlib import nullcontext

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # repo root: backbones, heads, sparse_ops

import torch  # noqa: E402

import _cfg  # noqa: E402
import _necks  # noqa: E402
import _profile_step  # noqa: E402
import _runtime  # noqa: E402
import _timing  # noqa: E402


# ------------------------------------------------------------------------------------------------- model + data
def load_cfg(path: str, options: dict | None = None):
    """Config with its scope's modules registered (and custom_imports imported), ``--cfg-options`` applied
    (``data_root=`` moves the dataset paths) and the neck widths checked; returns (cfg, scope). ``path`` may name a
    stock config as ``mmdet::swin/....py`` / ``mmseg::swin/....py``; its backbone's pretrained ``init_cfg`` is
    dropped."""
    stock = path.split('::')[0] in ('mmdet', 'mmseg')
    cfg, scope = _cfg.read_config(stock_config_path(path) if stock else path, options)
    if stock and cfg.model.get('backbone', {}).get('init_cfg'):
        cfg.model.backbone.init_cfg = None  # no pretrained download (init_weights is not called here anyway)
    _necks.check_neck_widths(cfg, scope)
    return cfg, scope


def stock_config_path(name: str) -> str:
    """``'mmdet::swin/x.py'`` -> the file of that config inside the installed mmdet (or mmseg) package."""
    import importlib
    package, rel = name.split('::', 1)
    return osp.join(osp.dirname(importlib.import_module(package).__file__), '.mim', 'configs', rel)


def build_model(cfg, scope: str, device: str) -> torch.nn.Module:
    """The config's model on ``device`` with SyncBN reverted to BN (single process); init_weights not called."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope, MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    return revert_sync_batchnorm(model).to(device)


def num_classes_of(cfg) -> int:
    """Classes the model predicts, read from its head config (mmdet roi/bbox/dense heads, mmseg decode head)."""
    m = cfg.model
    for path in (('decode_head', ), ('roi_head', 'bbox_head'), ('bbox_head', ), ('roi_head', 'mask_head')):
        node = m
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, (list, tuple)):
                node = node[-1]
        if isinstance(node, dict) and 'num_classes' in node:
            return int(node['num_classes'])
    return 1


def synthetic_batch(scope: str, batch: int, h: int, w: int, num_classes: int, with_gt: bool, seed: int = 0) -> dict:
    """A collated data batch as the dataloaders give it: ``inputs`` list of (3, h, w) uint8, ``data_samples`` with
    metainfo (and, if ``with_gt``, 4 random boxes with box-shaped masks, or a random (1, h, w) label map)."""
    from mmengine.structures import InstanceData, PixelData
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in range(batch)]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0), flip=False,
                img_id=0, img_path='synthetic.png')
    samples = []
    for _ in range(batch):
        if scope == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            s = DetDataSample(metainfo=meta)
            if with_gt:
                n = 4
                xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
                wh = (0.1 + 0.3 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
                boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], 1)
                masks = torch.zeros(n, h, w, dtype=torch.uint8)
                for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                    masks[i, y0:y1 + 1, x0:x1 + 1] = 1
                s.gt_instances = InstanceData(
                    bboxes=boxes, labels=torch.randint(0, num_classes, (n, ), generator=g),
                    masks=BitmapMasks(masks.numpy(), h, w))
                s.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
        else:
            from mmseg.structures import SegDataSample
            s = SegDataSample(metainfo=dict(meta, reduce_zero_label=False))
            if with_gt:
                s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=g))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


# ------------------------------------------------------------------------------------------------- measurement
def _timed(step, n_warmup: int, n_iters: int, device: str, label: str) -> dict:
    """Run ``step`` n_warmup + n_iters times with a progress bar; ``_timing.time_steps``' wall and GPU ms (medians
    of the timed ones, also as ``median_ms`` = wall) and the phase's peak MB, plus the wall mean."""
    from mmengine.utils import ProgressBar
    print(f'  {label}: {n_warmup} warm-up + {n_iters} timed iterations', flush=True)
    bar = ProgressBar(n_warmup + n_iters, file=sys.stdout)
    r = _timing.time_steps(step, device, n_warmup, n_iters, on_step=bar.update)
    sys.stdout.write('\n')
    return dict(median_ms=r['wall_ms'], mean_ms=statistics.fmean(r['walls_ms']), gpu_ms=r['gpu_ms'],
                peak_mb=r['peak_mib'])


def _backbone_step(model, inputs, autocast):
    """One fwd+bwd of ``model.backbone`` alone on the preprocessed ``inputs`` (loss = sum of the outputs' means)."""
    def step():
        with autocast():
            outs = model.backbone(inputs)
        sum(o.float().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)
    return step


def benchmark_config(path: str, args, options: dict | None) -> dict:
    """Measure one config: parameters, inference (predict mode) and one training step (loss, backward, AdamW)."""
    cfg, scope = load_cfg(path, options)
    device = args.device
    model = build_model(cfg, scope, device)
    if args.compile_backbone:
        model.backbone = torch.compile(model.backbone)
    h, w = args.shape
    amp_dtype = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]
    autocast = (lambda: torch.autocast(device_type=device.split(':')[0], dtype=amp_dtype)) if amp_dtype \
        else nullcontext
    result = dict(config=path, scope=scope, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                  shape=[h, w], batch=args.batch_size, amp=args.amp, device=device,
                  compiled_backbone=args.compile_backbone)
    print(f'{osp.basename(path)} ({scope}, {result["params_m"]:.1f} M parameters)', flush=True)
    ncls = num_classes_of(cfg)

    if args.mode in ('infer', 'both'):
        model.eval()
        data = model.data_preprocessor(synthetic_batch(scope, args.batch_size, h, w, ncls, False), False)

        def infer():
            with torch.no_grad(), autocast():
                model(**data, mode='predict')

        r = _timed(infer, args.warmup, args.iters, device, 'inference')
        result['infer'] = dict(r, fps=args.batch_size * 1e3 / r['median_ms'], input_shape=_ran_at(data, h, w))

    if args.mode in ('train', 'both'):
        model.train()
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        scaler = torch.amp.GradScaler(device.split(':')[0], enabled=amp_dtype is torch.float16)
        data = model.data_preprocessor(synthetic_batch(scope, args.batch_size, h, w, ncls, True), True)

        def train_step():
            with autocast():
                loss, _ = model.parse_losses(model(**data, mode='loss'))
            optim.zero_grad(set_to_none=True)
            with torch.profiler.record_function('backward'):     # labels for --profile; no cost without it
                scaler.scale(loss).backward()
            with torch.profiler.record_function('optimizer'):
                scaler.step(optim)
                scaler.update()

        r = _timed(train_step, args.warmup, args.iters, device, 'train step')
        result['train'] = dict(r, imgs_per_s=args.batch_size * 1e3 / r['median_ms'], input_shape=_ran_at(data, h, w))
        if args.profile:
            result['profile'] = _profile_step.profile_parts(train_step, model, device, args.profile)
            print(_profile_step.format_parts(_name(result), result['profile']), flush=True)
        optim.zero_grad(set_to_none=True)
        bb = _timed(_backbone_step(model, data['inputs'], autocast), args.warmup, args.iters, device,
                    'backbone fwd+bwd alone')
        result['backbone'] = dict(bb, share=bb['median_ms'] / r['median_ms'])
    del model
    return result


def _ran_at(data: dict, h: int, w: int) -> list[int]:
    """(B, 3, H, W) of the batch the model received; says so when the data preprocessor changed --shape (it pads to
    its size divisor, and mmseg's training preprocessor to the config's crop size)."""
    shape = list(data['inputs'].shape)
    if shape[-2:] != [h, w]:
        print(f'  note: the data preprocessor made the {h}x{w} input {shape[-2]}x{shape[-1]}; '
              'measured at that size', flush=True)
    return shape


# ------------------------------------------------------------------------------------------------- report
def machine_header(device: str) -> str:
    if device.startswith('cuda'):
        dev = torch.cuda.get_device_name(torch.device(device))
    else:
        dev = f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'
    return f'# {dev} | torch {torch.__version__} | python {platform.python_version()}'


def format_table(results: list[dict], device: str) -> str:
    cols = ['config', 'params M', 'infer HxW', 'infer ms', 'FPS', 'infer peak MB', 'train HxW', 'train ms',
            'train GPU ms', 'train img/s', 'train peak MB', 'backbone ms', 'rest ms', 'backbone share']
    rows = []

    def hw(phase):
        return 'x'.join(map(str, phase['input_shape'][-2:])) if phase else '-'

    for r in results:
        i, t, b = r.get('infer', {}), r.get('train', {}), r.get('backbone', {})
        name = _name(r)
        rows.append([name, f"{r['params_m']:.1f}", hw(i),
                     f"{i['median_ms']:.1f}" if i else '-', f"{i['fps']:.2f}" if i else '-',
                     f"{i['peak_mb']:.0f}" if i else '-', hw(t), f"{t['median_ms']:.1f}" if t else '-',
                     f"{t['gpu_ms']:.1f}" if t else '-', f"{t['imgs_per_s']:.2f}" if t else '-',
                     f"{t['peak_mb']:.0f}" if t else '-', f"{b['median_ms']:.1f}" if b else '-',
                     f"{t['median_ms'] - b['median_ms']:.1f}" if b else '-', f"{b['share']:.2f}" if b else '-'])
    widths = [max(len(c), *(len(row[k]) for row in rows)) for k, c in enumerate(cols)]
    r0 = results[0]
    lines = [machine_header(device),
             f"# batch {r0['batch']}, --shape {r0['shape'][0]} {r0['shape'][1]} (HxW: what the model received), "
             f"amp {r0['amp']}, median of timed "
             'iterations (wall; GPU: CUDA events); backbone = its fwd+bwd alone on the same input, rest = train - '
             'backbone' + ('' if device.startswith('cuda') else '; CPU peak = process peak RSS (cumulative)'),
             ' | '.join(c.ljust(wd) for c, wd in zip(cols, widths)),
             '-|-'.join('-' * wd for wd in widths)]
    lines += [' | '.join(v.ljust(wd) for v, wd in zip(row, widths)) for row in rows]
    return '\n'.join(lines)


def _name(result: dict) -> str:
    """Table name of a result: the config's file name, '+ compiled backbone' with --compile-backbone."""
    name = osp.splitext(osp.basename(result['config']))[0]
    return name + (' + compiled backbone' if result.get('compiled_backbone') else '')


def write_chart(results: list[dict], path: str, header: str) -> None:
    """Bar chart: inference ms, train step ms and peak MB (train, else inference) per config."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = [_name(r) for r in results]
    panels = [('inference ms', [r.get('infer', {}).get('median_ms', 0) for r in results]),
              ('train step ms', [r.get('train', {}).get('median_ms', 0) for r in results]),
              ('peak MB', [r.get('train', r.get('infer', {})).get('peak_mb', 0) for r in results])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 1.2 + 0.45 * len(names)))
    for ax, (title, values) in zip(axes, panels):
        ax.barh(range(len(names)), values, color='tab:blue')
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [''] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.grid(axis='x', alpha=0.3)
    fig.suptitle(header, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    from mmengine.config import DictAction
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('configs', nargs='+', help='config files, measured one after the other')
    ap.add_argument('--shape', type=int, nargs=2, default=[1024, 1024], metavar=('H', 'W'),
                    help='synthetic image size; the table and JSON report the size the model received (the data '
                    'preprocessor pads to its size divisor, and mmseg\'s to the crop size in training)')
    ap.add_argument('--batch-size', type=int, default=1)
    ap.add_argument('--mode', choices=['infer', 'train', 'both'], default='both')
    ap.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none', help='autocast dtype (GPU)')
    ap.add_argument('--iters', type=int, default=20, help='timed iterations per phase')
    ap.add_argument('--warmup', type=int, default=5, help='untimed iterations before them')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--compile-backbone', action='store_true',
                    help="wrap every model's backbone in torch.compile (default mode); its compilation falls in the "
                    'warm-up iterations')
    ap.add_argument('--profile', type=int, default=0, metavar='N',
                    help='after the timed training steps, profile N more and print host / GPU ms per part of the '
                    'model (backbone, neck, each head, backward, optimizer) and the GPU busy time')
    ap.add_argument('--out', help='write the results as JSON here')
    ap.add_argument('--chart', help='write a PNG bar chart here')
    ap.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                    help='override keys of every config, e.g. model.backbone.with_cp=True')
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1 or min(args.shape) < 1:
        ap.error(f'need --iters >= 1, --warmup >= 0, --batch-size >= 1, --shape >= 1; got {args.iters=} '
                 f'{args.warmup=} {args.batch_size=} {args.shape=}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = []
    try:
        for path in args.configs:
            results.append(benchmark_config(path, args, args.cfg_options))
    except _runtime.ConfigCheckError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    table = format_table(results, args.device)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(machine=machine_header(args.device), results=results), f, indent=2)
        print(f'wrote {args.out}')
    if args.chart:
        write_chart(results, args.chart, table.splitlines()[0] + '\n' + table.splitlines()[1])
        print(f'wrote {args.chart}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
