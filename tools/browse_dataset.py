"""Draw the ground truth of a config's dataset, as the model receives it (after the pipeline), and save PNGs.

Detection (mmdet): boxes, labels and instance masks with ``DetLocalVisualizer``; segmentation (mmseg): the label
map with ``SegLocalVisualizer``; the library is chosen by the config's ``default_scope``. Augmentations of the
training pipeline are applied, so running it twice shows different crops / flips. Val / test pipelines load the
annotations after resizing the image; here they are loaded first, so that the drawn ground truth fits.

    python tools/browse_dataset.py CONFIG [--split train|val|test] [--num 8] [--out-dir work_dirs/browse]
        [--cfg-options k=v ...]
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402

import _cfg  # noqa: E402
import _runtime  # noqa: E402
import _vis  # noqa: E402


LOADERS = ('LoadImageFromFile', 'mmdet.LoadImageFromFile', 'mmseg.LoadImageFromFile', 'LoadImageFromNDArray')
ANNOTATIONS = ('LoadAnnotations', 'mmdet.LoadAnnotations', 'mmseg.LoadAnnotations')


def annotations_first(pipeline: list) -> list:
    """The pipeline with the annotation loading moved right after the image loading. Stock val / test pipelines
    resize the image before loading the annotations (the metric compares at the original size), so the ground
    truth would not fit the drawn image; loaded first, the resize scales it with the image."""
    names = [t.get('type') if isinstance(t, dict) else None for t in pipeline]
    ann = [i for i, n in enumerate(names) if n in ANNOTATIONS]
    img = [i for i, n in enumerate(names) if n in LOADERS]
    if not ann or not img or ann[0] < img[0]:
        return list(pipeline)
    rest = [t for i, t in enumerate(pipeline) if i != ann[0]]
    return rest[:img[0] + 1] + [pipeline[ann[0]]] + rest[img[0] + 1:]


def check_split_paths(cfg, split: str) -> None:
    """The data paths of the split's datasets exist (whether or not the config runs that loop)."""
    loader = cfg.get(f'{split}_dataloader')
    if isinstance(loader, dict):
        for key, ds in _runtime._walk_datasets(loader.get('dataset'), f'{split}_dataloader.dataset'):
            _runtime._check_dataset(key, ds)


def build_dataset(cfg, scope: str, split: str):
    """The split's dataset object (pipeline included, annotations loaded before any resize), built in the
    config's scope."""
    from mmengine.registry import DATASETS, DefaultScope
    loader = cfg.get(f'{split}_dataloader')
    if not loader or 'dataset' not in loader:
        raise _runtime.ConfigCheckError(f'the config has no {split}_dataloader.dataset')
    for _, ds in _runtime._walk_datasets(loader['dataset'], ''):
        if isinstance(ds.get('pipeline'), list):
            ds['pipeline'] = annotations_first(ds['pipeline'])
    with DefaultScope.overwrite_default_scope(scope):
        return DATASETS.build(loader['dataset'])


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
    from mmengine.config import DictAction
    from mmengine.utils import ProgressBar
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('config')
    ap.add_argument('--split', choices=['train', 'val', 'test'], default='train')
    ap.add_argument('--num', type=int, default=8, help='images to draw (from the start of the dataset)')
    ap.add_argument('--out-dir', default='work_dirs/browse')
    ap.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    args = ap.parse_args(argv)
    try:
        cfg, scope = _cfg.read_config(args.config, args.cfg_options)
        check_split_paths(cfg, args.split)
        dataset = build_dataset(cfg, scope, args.split)
    except _runtime.ConfigCheckError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    visualizer = _vis.build_visualizer(cfg, scope, args.out_dir)
    visualizer.dataset_meta = dataset.metainfo
    num = min(args.num, len(dataset))
    bar = ProgressBar(num, file=sys.stdout)
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
