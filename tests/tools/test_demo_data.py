"""tools/make_demo_data.py: deterministic, valid COCO / ADE20K files that mmdet and mmseg load."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_tool

mdd = load_tool('make_demo_data')
SMALL = dict(size=64, num_train=5, num_val=3)


def test_same_arguments_same_bytes(tmp_path):
    a = mdd.make_demo_data(tmp_path / 'a', mdd.Params(**SMALL))
    b = mdd.make_demo_data(tmp_path / 'b', mdd.Params(**SMALL))
    c = mdd.make_demo_data(tmp_path / 'c', mdd.Params(**SMALL, seed=1))
    assert mdd.tree_digest(a) == mdd.tree_digest(b)
    assert mdd.tree_digest(a) != mdd.tree_digest(c)


def test_up_to_date_output_is_kept_and_changed_params_regenerate(tmp_path, capsys):
    out = tmp_path / 'd'
    mdd.make_demo_data(out, mdd.Params(**SMALL))
    digest = mdd.tree_digest(out)
    mdd.make_demo_data(out, mdd.Params(**SMALL))
    assert 'up to date' in capsys.readouterr().out
    assert mdd.tree_digest(out) == digest
    mdd.make_demo_data(out, mdd.Params(size=64, num_train=4, num_val=3))
    assert len(list((out / 'coco' / 'train').glob('*.jpg'))) == 4


@pytest.mark.parametrize('kind', mdd.CLASSES)
def test_rasterized_area_matches_polygon_area(kind):
    poly = mdd.shape_polygon(kind, 50.3, 47.9, 30.0, 0.7)
    x, y = poly[:, 0], poly[:, 1]
    shoelace = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    area = mdd.rasterize(poly, 100, 100).sum()
    assert abs(area - shoelace) / shoelace < 0.03


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match='hexagon'):
        mdd.shape_polygon('hexagon', 0, 0, 1, 0)


def test_coco_files_are_valid_and_masks_agree_with_pycocotools(demo_root):
    from pycocotools import mask as mask_utils
    root = demo_root / 'data/demo/coco'
    for split, n in (('train', 12), ('val', 4)):
        coco = json.loads((root / f'annotations/instances_{split}.json').read_text())
        assert {c['name'] for c in coco['categories']} == set(mdd.CLASSES)
        assert len(coco['images']) == n and coco['annotations']
        ids = {im['id'] for im in coco['images']}
        for im in coco['images']:
            assert Image.open(root / split / im['file_name']).size == (im['width'], im['height'])
        for ann in coco['annotations']:
            assert ann['image_id'] in ids and ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= 4
            x, y, w, h = ann['bbox']
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64.01 and y + h <= 64.01
            rle = mask_utils.frPyObjects(ann['segmentation'], 64, 64)
            theirs = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
            assert abs(int(theirs.sum()) - ann['area']) <= 0.15 * ann['area'] + 6


def test_coco_loads_with_mmdet(demo_root):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        ds = CocoDataset(data_root=str(demo_root / 'data/demo/coco'), ann_file='annotations/instances_train.json',
                         data_prefix=dict(img='train/'), metainfo=dict(classes=mdd.CLASSES),
                         pipeline=[dict(type='LoadImageFromFile'),
                                   dict(type='LoadAnnotations', with_bbox=True, with_mask=True)])
    assert len(ds) == 12
    labels = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item['img'].shape == (64, 64, 3)
        assert len(item['gt_bboxes']) == len(item['gt_masks']) >= 1
        masks = item['gt_masks'].to_ndarray()
        assert masks.reshape(len(masks), -1).sum(1).min() > 0
        labels.update(item['gt_bboxes_labels'].tolist())
    assert labels <= {0, 1, 2, 3} and len(labels) >= 2


@pytest.mark.parametrize('dataset_type', ['ADE20KDataset', 'BaseSegDataset'])
def test_ade_loads_with_mmseg(demo_root, dataset_type):
    """The real ADE20KDataset reads the layout (its class names are ADE20K's 150); the demo config reads it with
    BaseSegDataset, ADE20K's file conventions and our class names."""
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    cfg = dict(type=dataset_type, data_root=str(demo_root / 'data/demo/ade'),
               data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
               pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True)])
    if dataset_type == 'BaseSegDataset':
        cfg.update(img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
                   metainfo=dict(classes=('background', ) + mdd.CLASSES))
    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = DATASETS.build(cfg)
    assert len(ds) == 4
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        seg = item['gt_seg_map']
        assert seg.shape == (64, 64) and item['img'].shape == (64, 64, 3)
        seen.update(np.unique(seg).tolist())
    # labels 1..5 on disk become 0..4 after reduce_zero_label; 0 ("other") is never written, so no 255
    assert 0 in seen and seen <= {0, 1, 2, 3, 4} and len(seen) >= 2
