"""Evaluate a checkpoint of a detector (mmdet) or segmentor (mmseg); the library comes from ``default_scope``.

    python tools/test.py CONFIG CHECKPOINT [--show-dir DIR] [--show [--wait-time 2]] [--out preds.pkl | DIR]
        [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT 2 [args]

Prints the metrics (COCO bbox/segm mAP, mIoU) and writes them to ``<work_dir>/test_metrics.json``. ``--show-dir``
draws the predictions on every test image and saves PNGs (mmdet: DIR/<image>.png; mmseg: DIR/vis_data/vis_image/
<image>_<iter>.png, left ground truth, right prediction). ``--out DIR`` (segmentation) writes label-map PNGs as
mmseg's test.py does; ``--out preds.pkl`` the raw predictions (``_outputs``).
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repo root: `backbones`, `heads`
# OpenMP threads that spin while waiting make CPU training much slower whenever another process shares the cores
# (measured on the 2-core machines); must be set before torch is imported
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import _checkpoint  # noqa: E402
import _outputs  # noqa: E402
import _runtime  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    ap = argparse.ArgumentParser(description='Test (evaluate) a detector or segmentor checkpoint')
    ap.add_argument('config', help='config file path')
    ap.add_argument('checkpoint', help='checkpoint file (e.g. written by tools/train.py)')
    ap.add_argument('--trust-checkpoint', action='store_true',
                    help='allow full unpickling of CHECKPOINT when weights-only loading refuses it (a malicious file '
                    'runs code: only for files you trust)')
    ap.add_argument('--allow-partial-checkpoint', action='store_true',
                    help='load a checkpoint whose keys / shapes fit the model only partly (default: refuse it)')
    ap.add_argument('--work-dir', help='folder for logs and test_metrics.json (default: ./work_dirs/<config name>)')
    ap.add_argument('--out', help='preds.pkl: dump the raw predictions; DIR (segmentation): write one label-map '
                    'PNG per test image there (mmseg\'s format)')
    ap.add_argument('--show-dir', help='draw predictions on the test images and save them as PNGs here')
    ap.add_argument('--show', action='store_true', help='show each drawing in a window (needs a display)')
    ap.add_argument('--wait-time', type=float, default=2, help='seconds each --show window stays open')
    ap.add_argument('--score-thr', type=float, default=0.3, help='detection score threshold for drawing')
    ap.add_argument('--tta', action='store_true', help='test-time augmentation (config needs tta_model/tta_pipeline)')
    ap.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                    help='override config keys (keys must exist in the config); '
                    'data_root=DIR moves every path under the config\'s data_root')
    ap.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    ap.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = ap.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg, scope = _runtime.load_config(args)
    if not osp.isfile(args.checkpoint):
        raise _runtime.ConfigCheckError(f"checkpoint '{args.checkpoint}' does not exist")
    cfg.load_from = args.checkpoint
    cfg.resume = False

    _outputs.set_drawing(cfg, scope, args.show_dir, args.show, args.wait_time, args.score_thr)

    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise _runtime.ConfigCheckError('--tta: the config defines no tta_model / tta_pipeline')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    if args.out:
        _outputs.set_out(cfg, scope, args.out)

    _runtime.check_data_paths(cfg, ['test'])
    # the arguments are checked: now read the file, weights-only (--trust-checkpoint: may fall back to full
    # unpickling), refused unless it fits the model
    _checkpoint.install_loader(*([args.checkpoint] if args.trust_checkpoint else []))
    _checkpoint.check_checkpoint(args.checkpoint)
    import _checkpoint_hooks
    _checkpoint_hooks.check_checkpoint_fit(cfg, args.checkpoint, args.allow_partial_checkpoint)
    return cfg


def _plain(value):
    """A JSON-friendly metric value (mmseg returns numpy scalars)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _save_drawings_as_png(visualizer) -> None:
    """mmdet's hook names drawings after the image (``000001.jpg``, so JPEG); write lossless PNGs instead."""
    draw = visualizer.add_datasample

    def add_datasample(*args, out_file=None, **kwargs):
        if out_file is not None:
            out_file = osp.splitext(out_file)[0] + '.png'
        return draw(*args, out_file=out_file, **kwargs)

    visualizer.add_datasample = add_datasample


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_cfg(args)
        runner = _runtime.build_runner(cfg)
    except _runtime.ConfigCheckError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except _checkpoint.CheckpointError as e:
        return _runtime.fail(e)
    if args.show_dir and cfg.default_scope == 'mmdet':
        _save_drawings_as_png(runner.visualizer)
    try:
        metrics = runner.test()
    except _checkpoint.CheckpointError as e:
        return _runtime.fail(e)
    if runner.rank == 0:
        metrics = {k: _plain(v) for k, v in (metrics or {}).items()}
        os.makedirs(cfg.work_dir, exist_ok=True)
        with open(osp.join(cfg.work_dir, 'test_metrics.json'), 'w') as f:
            json.dump(metrics, f, indent=1)
        print('[test] ' + '  '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                                    for k, v in metrics.items()))
    _runtime.end_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
