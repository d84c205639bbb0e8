"""The full-size HWT-T Mask R-CNN config on real COCO images by changing ``data_root`` alone.

Uses the 50 + 50 image subset in ``../shared/data/tiny_coco`` (standard COCO 2017 layout); skipped cleanly when it is
absent. One real image goes through the config's own train pipeline, the HWT-T Mask R-CNN computes its losses and
one optimizer step runs (CPU, the config's AdamW without AMP); the val pipeline and CocoMetric's annotation file
resolve under the new root.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import REPO, load_tool

TINY_COCO = REPO.parent / 'shared' / 'data' / 'tiny_coco'
CFG = REPO / 'configs/hwt/mask-rcnn_hwt-t_fpn_1x_coco.py'

pytestmark = pytest.mark.skipif(not (TINY_COCO / 'annotations' / 'instances_train2017.json').is_file(),
                                reason=f'real COCO subset not found at {TINY_COCO}')


def test_full_size_config_trains_a_step_on_real_coco():
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS, MODELS

    runtime = load_tool('_runtime')
    cfg = Config.fromfile(str(CFG))
    runtime.setup_scope(cfg)
    runtime.apply_cfg_options(cfg, {'data_root': str(TINY_COCO) + '/'})
    assert Path(cfg.val_evaluator.ann_file) == TINY_COCO / 'annotations/instances_val2017.json'
    runtime.check_data_paths(cfg, ['train', 'val'])  # raises naming the key when a path is wrong
    init_default_scope('mmdet')

    # shrink the images for CPU time only: same pipeline, same model, smaller Resize target
    for t in cfg.train_dataloader.dataset.pipeline:
        if t.type == 'Resize':
            t.scale = (320, 192)
    train_set = DATASETS.build(cfg.train_dataloader.dataset)
    val_set = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(train_set) > 0 and len(val_set) > 0
    sample = next(train_set[i] for i in range(len(train_set)) if len(train_set[i]['data_samples'].gt_instances) > 0)

    torch.manual_seed(0)
    cfg.model.backbone.init_cfg = None  # the config names the official ImageNet weights (a download): not here
    model = MODELS.build(cfg.model)
    model.init_weights()
    cfg.optim_wrapper.type = 'OptimWrapper'  # the config's AMP wrapper needs CUDA
    cfg.optim_wrapper.pop('loss_scale', None)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    batch = dict(inputs=[sample['inputs']], data_samples=[sample['data_samples']])
    before = [p.detach().clone() for p in model.backbone.parameters()]
    logs = model.train_step(batch, optim)
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(logs)
    assert all(math.isfinite(float(v)) for v in logs.values())
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.backbone.parameters()))
    assert changed > 0.9 * len(before), f'only {changed}/{len(before)} HWT parameters were updated'
