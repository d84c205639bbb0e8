"""The zoo configs (AdamW + AmpOptimWrapper) train on a machine without CUDA through tools/train.py: the tool turns
the AMP wrapper into a plain OptimWrapper with a one-line notice. One config of each zoo family (every recipe of
configs/_base_/recipes, the HWT foundation configs, the heads configs; the backbones rotate) is built by train.py's
own ``build_cfg`` / ``build_runner`` and trains one iteration on the embedded dataset, at 64 px so that it stays
fast (image scales, crops and the segmentor's pad size shrunk; the networks are the configs' own)."""
from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from test_configs import REPO, data_options, demo_data, parse_metafiles_once  # noqa: F401  (fixtures)

sys.path.insert(0, str(REPO / 'tools'))
_spec = importlib.util.spec_from_file_location('sparsedense_tools_train', REPO / 'tools/train.py')
train = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = train
_spec.loader.exec_module(train)
_amp = train._amp

FAST = 'hwt/upernet_hwt-t_8xb2-160k_ade20k-512x512'
FAMILIES = [  # one per recipe / family; every backbone appears
    FAST,
    'hwt/mask-rcnn_hwt-t_fpn_1x_coco',
    'nat/mask-rcnn_nat-t_fpn_ms-crop-3x_coco',
    'hnt/mask-rcnn_hnt-t_fpn_1x_coco-2048',
    'dinat/retinanet_dinat-t_fpn_1x_coco',
    'biformer/cascade-mask-rcnn_biformer-t_fpn_ms-crop-3x_coco',
    'nat/upernet_nat-t_8xb2-160k_ade20k-640x640',
    'biformer/upernet_biformer-t_8xb2-160k_ade20k-1024x1024',
    'hnt/fpn_hnt-t_8xb4-80k_ade20k-512x512',
    'heads/upernet-routing_hwt-t_8xb2-160k_ade20k-512x512',
    'heads/mask-rcnn_hwt-t_hilbert-fpn_1x_coco',
]
SIDE = 64


def _shrink(node):
    """Every image scale / crop of a pipeline (nested RandomChoice lists included) -> 64 px."""
    if isinstance(node, dict):
        for key in list(node):
            if key in ('scale', 'crop_size', 'img_scale'):
                node[key] = (SIDE, SIDE)
            elif key == 'scales':
                node[key] = [(SIDE, SIDE)]
            elif key == 'ratio_range':
                node[key] = (1.0, 1.0)
            else:
                _shrink(node[key])
    elif isinstance(node, list):
        for v in node:
            _shrink(v)


def _one_iteration(cfg):
    cfg.model.backbone.init_cfg = None  # the zoo configs name official ImageNet weights: no download in tests
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.train_dataloader.batch_size = 2  # BatchNorm after UperHead's 1x1 pooling needs two images
    cfg.train_dataloader.dataset.indices = 2
    _shrink(cfg.train_dataloader.dataset.pipeline)
    if cfg.model.data_preprocessor.get('size'):
        cfg.model.data_preprocessor.size = (SIDE, SIDE)
    cfg.default_hooks.logger.interval = 1


@pytest.mark.parametrize('name', [pytest.param(n, marks=() if n == FAST else pytest.mark.slow) for n in FAMILIES])
def test_zoo_config_trains_one_iteration_without_cuda(name, demo_data, tmp_path, monkeypatch, capsys):
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    monkeypatch.setattr(_amp, 'has_accelerator', lambda: False)
    path = REPO / 'configs' / f'{name}.py'
    args = train.parse_args([str(path), '--work-dir', str(tmp_path)])
    args.cfg_options = data_options('mmseg' if 'ade20k' in name else 'mmdet', demo_data)  # what DictAction gives
    cfg = train.build_cfg(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: no CUDA device: training in fp32 with OptimWrapper instead of the config's "
                   'AmpOptimWrapper (dropped loss_scale)']
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    _one_iteration(cfg)
    runner = train._runtime.build_runner(cfg)
    runner.train()
    assert runner.iter == 1
    assert type(runner.optim_wrapper) is OptimWrapper and not isinstance(runner.optim_wrapper, AmpOptimWrapper)
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert math.isfinite(loss) and loss > 0


def _wrapper_cfg(**wrapper):
    from mmengine.config import Config
    return Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-4), **wrapper)))


def test_amp_switch_rules():
    # AMP config without an accelerator: plain wrapper, AMP-only keys gone, one notice
    cfg = _wrapper_cfg(type='AmpOptimWrapper', loss_scale='dynamic', dtype='bfloat16')
    notice = _amp.set_amp(cfg, amp=False, no_amp=False, accelerator=False)
    assert notice.startswith('note: no CUDA device:') and 'loss_scale, dtype' in notice
    assert cfg.optim_wrapper.to_dict() == dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
    # with an accelerator the config is kept unless --no-amp
    cfg = _wrapper_cfg(type='AmpOptimWrapper', loss_scale=512.0)
    assert _amp.set_amp(cfg, amp=False, no_amp=False, accelerator=True) is None
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 512.0
    assert _amp.set_amp(cfg, amp=False, no_amp=True, accelerator=True).startswith('note: --no-amp:')
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    # --amp turns a plain wrapper into AMP on a GPU, and is refused without one
    cfg = _wrapper_cfg(type='OptimWrapper')
    with pytest.raises(ValueError, match='--amp needs a CUDA device'):
        _amp.set_amp(cfg, amp=True, no_amp=False, accelerator=False)
    assert _amp.set_amp(cfg, amp=True, no_amp=False, accelerator=True) is None
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'
    # only the type changed (what the docs used to say): the AMP-only keys go as well, with a notice
    cfg = _wrapper_cfg(type='OptimWrapper', loss_scale='dynamic')
    assert _amp.set_amp(cfg, amp=False, no_amp=False, accelerator=True) == (
        'note: optim_wrapper is a plain OptimWrapper: dropped its AMP-only loss_scale')
    assert cfg.optim_wrapper.to_dict() == dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
    # a plain config stays plain and silent
    cfg = _wrapper_cfg(type='OptimWrapper')
    assert _amp.set_amp(cfg, amp=False, no_amp=True, accelerator=False) is None
    assert cfg.optim_wrapper.type == 'OptimWrapper'


def test_amp_and_no_amp_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(['x.py', '--amp', '--no-amp'])
    assert 'not allowed with argument' in capsys.readouterr().err
