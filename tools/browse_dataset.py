"""Draw the ground truth of a config's dataset, as the model receives it (after the pipeline), and save PNGs.

Detection (mmdet): boxes, labels and instance masks with ``DetLocalVisualizer``; segmentation (mmseg): the label
map with ``SegLocalVisualizer``; the library is chosen by the config's ``default_scope``. Augmentations of the
training pipeline are applied, so running it twice shows different crops / flips.

    python tools/browse_dataset.py CONFIG [--split train|val|test] [--num 8] [--out-dir work_dirs/browse]
        [--cfg-options k=v ...]
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import uuid

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402

import _runtime  # noqa: E402


def build_dataset(cfg, scope: str, split: str):
    """The split's dataset object (pipeline included), built in the config's scope."""
    from mmengine.registry import DATASETS, DefaultScope
    loader = cfg.get(f'{split}_dataloader')
    if not loader or 'dataset' not in loader:
        raise _runtime.ConfigCheckError(f'the config has no {split}_dataloader.dataset')
    with DefaultScope.overwrite_default_scope(scope):
        return DATASETS.build(loader['dataset'])


def build_visualizer(cfg, scope: str, out_dir: str):
    """The config's visualizer under a fresh instance name (visualizers are named singletons in mmengine)."""
    from mmengine.registry import VISUALIZERS, DefaultScope
    vis_cfg = dict(cfg.visualizer)
    vis_cfg.update(name=f'browse_{uuid.uuid4().hex[:8]}', vis_backends=None, save_dir=out_dir)
    with DefaultScope.overwrite_default_scope(scope):
        return VISUALIZERS.build(vis_cfg)


def to_drawable(item: dict, scope: str):
    """(RGB HxWx3 uint8 image, data sample with numpy GT) from one pipeline output."""
    img = item['inputs'].permute(1, 2, 0).numpy()[..., ::-1]  # packed inputs are BGR
    sample = item['data_samples'].numpy()
    if scope == 'mmdet':
        from mmdet.structures.bbox import BaseBoxes
        from mmdet.structures.mask import BitmapMasks, PolygonMasks
        gt = sample.gt_instances
        if isinstance(gt.get('bboxes'), BaseBoxes):
            gt.bboxes = gt.bboxes.tensor
        masks = gt.get('masks')
        if isinstance(masks, (BitmapMasks, PolygonMasks)):
            gt.masks = masks.to_ndarray().astype(bool)
        sample.gt_instances = gt
    return np.ascontiguousarray(img), sample


def main(argv=None) -> int:
    from mmengine.config import Config, DictAction
    from mmengine.utils import ProgressBar
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('config')
    ap.add_argument('--split', choices=['train', 'val', 'test'], default='train')
    ap.add_argument('--num', type=int, default=8, help='images to draw (from the start of the dataset)')
    ap.add_argument('--out-dir', default='work_dirs/browse')
    ap.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    args = ap.parse_args(argv)
    try:
        if not osp.isfile(args.config):
            raise _runtime.ConfigCheckError(f"config file '{args.config}' does not exist")
        cfg = Config.fromfile(args.config)
        scope = _runtime.setup_scope(cfg)
        _runtime.check_cfg_options(cfg, args.cfg_options, scope)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        _runtime.check_data_paths(cfg, [args.split] if args.split == 'train' else [])
        dataset = build_dataset(cfg, scope, args.split)
    except _runtime.ConfigCheckError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    visualizer = build_visualizer(cfg, scope, args.out_dir)
    visualizer.dataset_meta = dataset.metainfo
    num = min(args.num, len(dataset))
    bar = ProgressBar(num)
    for i in range(num):
        item = dataset[i]
        img, sample = to_drawable(item, scope)
        name = osp.splitext(osp.basename(sample.img_path))[0]
        out_file = osp.join(args.out_dir, f'{i:04d}_{name}.png')
        visualizer.add_datasample(name, img, sample, draw_pred=False, show=False, out_file=out_file)
        bar.update()
    print(f'\nwrote {num} images to {args.out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
