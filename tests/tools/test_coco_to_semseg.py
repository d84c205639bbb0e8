"""tools/coco_to_semseg.py: COCO instances -> semantic label maps that mmseg's BaseSegDataset reads."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, load_tool


def _square(x0, y0, s):
    return [[x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]]


@pytest.fixture
def coco_root(tmp_path):
    """One 40x30 image: a big 'dog' (id 18) square, a small 'cat' (id 17) square on top of it, a crowd 'person'."""
    root = tmp_path / 'coco'
    (root / 'annotations').mkdir(parents=True)
    (root / 'val2017').mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / 'val2017' / '000000000007.jpg')
    anns = [dict(id=2, image_id=7, category_id=17, segmentation=_square(12, 12, 6), area=36, iscrowd=0,
                 bbox=[12, 12, 6, 6]),
            dict(id=1, image_id=7, category_id=18, segmentation=_square(5, 5, 20), area=400, iscrowd=0,
                 bbox=[5, 5, 20, 20]),
            dict(id=3, image_id=7, category_id=1, segmentation=_square(30, 0, 8), area=64, iscrowd=1,
                 bbox=[30, 0, 8, 8])]
    cats = [dict(id=1, name='person'), dict(id=17, name='cat'), dict(id=18, name='dog')]
    ann = dict(images=[dict(id=7, file_name='000000000007.jpg', height=30, width=40)], annotations=anns,
               categories=cats)
    (root / 'annotations' / 'instances_val2017.json').write_text(json.dumps(ann))
    return root


def test_labels_small_objects_on_top_and_crowds_ignored(coco_root, tmp_path):
    out = tmp_path / 'sem'
    load_tool('coco_to_semseg').main([str(coco_root), str(out), '--splits', 'val2017'])
    lab = np.array(Image.open(out / 'annotations' / 'val2017' / '000000000007.png'))
    assert lab.shape == (30, 40) and lab.dtype == np.uint8
    assert lab[8, 8] == 3            # dog: third category in id order
    assert lab[15, 15] == 2          # cat, painted over the larger dog
    assert lab[3, 33] == 255         # crowd person: ignored
    assert lab[28, 2] == 0           # nothing
    assert set(np.unique(lab)) == {0, 2, 3, 255}
    assert (out / 'images' / 'val2017' / '000000000007.jpg').resolve() == \
        (coco_root / 'val2017' / '000000000007.jpg').resolve()
    assert json.loads((out / 'classes.json').read_text()) == ['person', 'cat', 'dog']


def test_names_a_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='instances_train2017.json'):
        load_tool('coco_to_semseg').main([str(tmp_path), str(tmp_path / 'out'), '--splits', 'train2017'])


def test_the_coco_things_config_reads_the_converted_maps(coco_root, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    import mmseg.datasets  # noqa: F401 (registers BaseSegDataset and the transforms)

    out = tmp_path / 'sem'
    load_tool('coco_to_semseg').main([str(coco_root), str(out), '--splits', 'val2017'])
    cfg = Config.fromfile(str(REPO / 'configs/hwt/upernet_hwt-t_8xb2-40k_coco-things-512x512.py'))
    init_default_scope('mmseg')
    ds_cfg = cfg.val_dataloader.dataset
    ds_cfg.data_root = str(out)
    ds = DATASETS.build(ds_cfg)
    assert len(ds) == 1 and len(ds.metainfo['classes']) == cfg.model.decode_head.num_classes == 80
    seg = ds[0]['data_samples'].gt_sem_seg.data[0].numpy()
    # reduce_zero_label: dog 3 -> 2, cat 2 -> 1 (COCO ids 18 / 17 are 'dog' / 'cat' in the 80-class list), 0 -> 255
    assert seg[15 * seg.shape[0] // 30, 15 * seg.shape[1] // 40] == 1
    assert (seg == 255).any()
