"""Train a detector (mmdet) or a segmentor (mmseg) from an MM-style config.

The library is picked from the config's ``default_scope``. Examples:

    python tools/train.py configs/demo/mask-rcnn_hwt-demo_fpn_demo-coco.py
    python tools/train.py CONFIG --work-dir work_dirs/x --resume            # continue from the latest checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/iter_200.pth          # continue from this checkpoint
    python tools/train.py CONFIG --cfg-options train_cfg.max_iters=100 --amp
    python tools/train.py CONFIG --no-amp                                   # fp32 (automatic without CUDA)
    python tools/train.py CONFIG --resume old.pth --trust-checkpoint       # a legacy file you trust
    python tools/train.py CONFIG --skip-data-check                          # no dataset check before training
    bash tools/dist_train.sh CONFIG 2 [args]                                # torchrun, 2 processes

Checkpoints are read weights-only and written atomically with an integrity record (``_checkpoint``,
``_checkpoint_hooks``); the datasets are checked before the first iteration (``_datacheck``).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repo root: `backbones`, `heads`
# OpenMP threads that spin while waiting make CPU training much slower whenever another process shares the cores
# (measured on the 2-core machines); must be set before torch is imported
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import _amp  # noqa: E402
import _checkpoint  # noqa: E402
import _runtime  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    ap = argparse.ArgumentParser(description='Train a detector or segmentor')
    ap.add_argument('config', help='config file path')
    ap.add_argument('--work-dir', help='folder for logs and checkpoints (default: ./work_dirs/<config name>)')
    ap.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
                    help='resume: without a value from the latest checkpoint in the work dir, '
                    'with a value from that checkpoint')
    amp = ap.add_mutually_exclusive_group()
    amp.add_argument('--amp', action='store_true', help='mixed-precision training (AmpOptimWrapper; needs a GPU)')
    amp.add_argument('--no-amp', action='store_true',
                     help='fp32 training with a plain OptimWrapper, also for AMP configs (done by default, with a '
                     'notice, when no CUDA device is present)')
    ap.add_argument('--trust-checkpoint', action='store_true',
                    help='allow full unpickling of the resume / load_from checkpoint when weights-only loading refuses '
                    'it (a malicious file runs code: only for files you trust)')
    ap.add_argument('--skip-data-check', action='store_true',
                    help='do not check the dataset (images, headers, annotations, label maps) before training')
    ap.add_argument('--auto-scale-lr', action='store_true', help='scale the lr by the real total batch size')
    ap.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                    help='override config keys, e.g. train_cfg.max_iters=100 (keys must exist in the config); '
                    'data_root=DIR moves every path under the config\'s data_root')
    ap.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    ap.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = ap.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg, _ = _runtime.load_config(args)
    try:
        notice = _amp.set_amp(cfg, args.amp, args.no_amp)
    except ValueError as e:
        raise _runtime.ConfigCheckError(str(e)) from e
    if notice:
        print(notice, file=sys.stderr)

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise _runtime.ConfigCheckError('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':  # the newest intact checkpoint; last_checkpoint is only a hint
        path, notes = _checkpoint.resolve_resume(cfg.work_dir)
        for note in notes:
            print(f'warning: --resume: {note}', file=sys.stderr, flush=True)
        if path is None:
            print(f'warning: --resume: no checkpoint in {cfg.work_dir}; training starts at iteration 0',
                  file=sys.stderr, flush=True)
        cfg.resume, cfg.load_from = path is not None, (str(path) if path else None)
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise _runtime.ConfigCheckError(f"--resume: checkpoint '{args.resume}' does not exist")
        cfg.resume, cfg.load_from = True, args.resume
    phases = ['train'] + (['val'] if cfg.get('train_cfg', {}).get('val_interval', 1) else [])
    _runtime.check_data_paths(cfg, phases)
    # every checkpoint is read weights-only; --trust-checkpoint lets the one being resumed / loaded fall back
    _checkpoint.install_loader(*([cfg.get('load_from')] if args.trust_checkpoint else []))
    if cfg.get('load_from') and '://' not in str(cfg.load_from):
        _checkpoint.check_checkpoint(cfg.load_from)
    import _checkpoint_hooks
    _checkpoint_hooks.use_safe_checkpoints(cfg)
    import _datacheck  # noqa: F401  registers DataCheckHook
    _checkpoint_hooks.drop_hook(cfg, 'DataCheckHook')  # a config dumped by an earlier run may hold it
    if not args.skip_data_check:
        _checkpoint_hooks.add_hook(cfg, dict(type='DataCheckHook'))
    return cfg


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
    import _datacheck
    from backbones.converters.init import PretrainedError
    try:
        runner.train()
    except (_checkpoint.CheckpointError, _datacheck.DataCheckError, PretrainedError) as e:
        return _runtime.fail(e)
    except Exception as e:  # noqa: BLE001  mmengine cannot build an empty dataset: name it (else re-raise)
        problem = None if _datacheck.loops_built(runner) else _datacheck.diagnose(cfg)
        if problem is None:
            raise
        problem.__cause__ = e
        return _runtime.fail(problem)
    _runtime.end_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
