"""Turn COCO instance annotations into semantic label maps (mmseg layout), e.g. to train a segmentor on COCO images.

    python tools/coco_to_semseg.py DATA_ROOT OUT [--splits train2017 val2017]

Reads ``DATA_ROOT/annotations/instances_{split}.json`` and ``DATA_ROOT/{split}/*.jpg`` (the standard COCO 2017
layout) and writes, per split::

    OUT/images/{split}/<name>.jpg          a symbolic link to the COCO image (no copy)
    OUT/annotations/{split}/<name>.png     uint8 label map: 0 = no object, 1..K = the K categories in id order
    OUT/classes.json                       the K category names, in label order

Instances are painted largest first, so a smaller object in front of a larger one keeps its label; crowd regions
are painted 255 (ignored by mmseg's losses and metrics). Train with mmseg's ``BaseSegDataset``
(``img_suffix='.jpg'``, ``seg_map_suffix='.png'``) and ``reduce_zero_label=True`` to ignore the unlabelled pixels
(``configs/hwt/upernet_hwt-t_8xb2-40k_coco-things-512x512.py`` does this).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CROWD = 255


def label_map(coco, img_info: dict, label_of: dict) -> np.ndarray:
    """(H, W) uint8 labels of one image from its instance annotations (``pycocotools`` COCO object)."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=img_info['id'], iscrowd=None))
    out = np.zeros((img_info['height'], img_info['width']), dtype=np.uint8)
    for ann in sorted(anns, key=lambda a: -a['area']):
        mask = coco.annToMask(ann).astype(bool)
        out[mask] = CROWD if ann.get('iscrowd', 0) else label_of[ann['category_id']]
    return out


def convert_split(data_root: Path, out: Path, split: str) -> tuple[int, list[str]]:
    from pycocotools.coco import COCO
    ann_file = data_root / 'annotations' / f'instances_{split}.json'
    img_dir = data_root / split
    for path in (ann_file, img_dir):
        if not path.exists():
            raise FileNotFoundError(f'{path} not found (expected the COCO 2017 layout under {data_root})')
    coco = COCO(str(ann_file))
    cat_ids = sorted(coco.getCatIds())
    if len(cat_ids) > 254:
        raise ValueError(f'{len(cat_ids)} categories do not fit uint8 labels 1..254')
    label_of = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    (out / 'images' / split).mkdir(parents=True, exist_ok=True)
    (out / 'annotations' / split).mkdir(parents=True, exist_ok=True)
    img_ids = sorted(coco.getImgIds())
    for i, img_id in enumerate(img_ids):
        info = coco.loadImgs(img_id)[0]
        name = Path(info['file_name']).stem
        link = out / 'images' / split / f'{name}.jpg'
        if not link.exists():
            link.symlink_to((img_dir / info['file_name']).resolve())
        Image.fromarray(label_map(coco, info, label_of)).save(out / 'annotations' / split / f'{name}.png')
        print(f'\r{split}: {i + 1}/{len(img_ids)}', end='', file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return len(img_ids), [c['name'] for c in coco.loadCats(cat_ids)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('data_root', type=Path)
    ap.add_argument('out', type=Path)
    ap.add_argument('--splits', nargs='+', default=['train2017', 'val2017'])
    args = ap.parse_args(argv)
    names = None
    for split in args.splits:
        n, split_names = convert_split(args.data_root, args.out, split)
        if names is not None and split_names != names:
            raise ValueError(f'split {split} has other categories than {args.splits[0]}')
        names = split_names
        print(f'{split}: {n} label maps in {args.out / "annotations" / split}')
    (args.out / 'classes.json').write_text(json.dumps(names))


if __name__ == '__main__':
    main()
