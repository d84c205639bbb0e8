"""Write the embedded demo dataset: coloured shapes in the real COCO and ADE20K on-disk formats.

Deterministic (every image has its own seeded generator, so the bytes depend only on the arguments) and offline.

    data/demo/coco/annotations/instances_{train,val}.json   COCO instances, polygon masks
    data/demo/coco/{train,val}/000000.jpg
    data/demo/ade/images/{training,validation}/000000.jpg
    data/demo/ade/annotations/{training,validation}/000000.png   labels 1..5 (0 = "other", ignored by
                                                                  ADE20K's reduce_zero_label, as in the real set)

Scenes: a textured background (two-colour gradient, stripes, blotches, pixel noise) with shapes of four classes
(circle, square, triangle, star) at random size, rotation and position. Each class has its own hue band with jitter
and every shape carries its own texture, so colour helps but does not decide the class alone: the model must use
shape too. Detection scenes keep objects apart (the polygons are then the exact visible masks); segmentation scenes
let shapes overlap (the label map is painted in drawing order).

Usage: python tools/make_demo_data.py [--out data/demo] [--size 128] [--num-train 400] [--num-val 60] [--force]
"""
from __future__ import annotations

import argparse
import colorsys
import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ('circle', 'square', 'triangle', 'star')
# centre hue of each class (fraction of the colour circle); jitter below keeps the bands apart but close
CLASS_HUES = (0.0, 0.33, 0.62, 0.14)
HUE_JITTER = 0.06
SEG_CLASSES = ('background', ) + CLASSES
SEG_PALETTE = [(120, 120, 120), (220, 20, 60), (0, 160, 80), (30, 90, 220), (230, 190, 20)]
VERSION = 1  # bump when the scene model changes, so cached datasets are regenerated


@dataclass(frozen=True)
class Params:
    size: int = 128
    num_train: int = 400
    num_val: int = 60
    seed: int = 0
    version: int = VERSION


# ---------------------------------------------------------------------------------------------------- geometry
def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (K, 2) as (x, y) in pixel coordinates of a shape of circumradius ``r``."""
    if kind == 'circle':
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        rad = np.full_like(t, r)
    elif kind == 'square':
        t = np.arange(4) * np.pi / 2 + np.pi / 4
        rad = np.full_like(t, r)
    elif kind == 'triangle':
        t = np.arange(3) * 2 * np.pi / 3 - np.pi / 2
        rad = np.full_like(t, r)
    elif kind == 'star':
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        raise ValueError(f'unknown shape {kind!r}; valid: {CLASSES}')
    t = t + angle
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


def rasterize(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of the pixels whose centres lie inside ``poly`` (even-odd rule)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    inside = np.zeros((h, w), dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue
        crosses = (ay > ys) != (by > ys)
        x_at = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xs < x_at)
    return inside


# ---------------------------------------------------------------------------------------------------- rendering
def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float image (size, size, 3) in [0, 1]: gradient + stripes + blotches, desaturated so shapes stand out."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0 = _rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.85))
    c1 = _rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.85))
    theta = rng.uniform(0, 2 * np.pi)
    g = np.clip((np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    img = c0 * (1 - g) + c1 * g
    # low-contrast stripes at a random angle and period
    phi = rng.uniform(0, np.pi)
    period = rng.uniform(6, 24) / size
    stripes = np.sin(2 * np.pi * (np.cos(phi) * xx + np.sin(phi) * yy) / period)
    img = img + rng.uniform(0.0, 0.08) * stripes[..., None]
    # a few soft blotches
    for _ in range(rng.integers(0, 4)):
        bx, by, br = rng.random(), rng.random(), rng.uniform(0.05, 0.25)
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br * br))[..., None]
        img = img + rng.uniform(-0.15, 0.15) * blob
    return img


def shape_colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    hue = CLASS_HUES[cls] + rng.uniform(-HUE_JITTER, HUE_JITTER)
    return _rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``mask`` with ``colour`` plus a per-shape texture (shading gradient and speckle)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.15, 0.15) * (yy - 0.5)
    speckle = rng.normal(0, rng.uniform(0.01, 0.06), size=(size, size)).astype(np.float32)
    tex = colour[None, None, :] + (shade + speckle)[..., None]
    img[mask] = tex[mask]


@dataclass
class Obj:
    cls: int
    poly: np.ndarray
    mask: np.ndarray


def render_scene(rng: np.random.Generator, size: int, *, max_objects: int, overlap: bool) -> tuple[np.ndarray, list]:
    """One image (uint8 HxWx3) and its objects in drawing order."""
    img = render_background(rng, size)
    objs: list[Obj] = []
    boxes: list[tuple[float, float, float, float]] = []
    n = int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        for _try in range(30):
            cls = int(rng.integers(len(CLASSES)))
            r = rng.uniform(0.09, 0.24) * size
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            poly = shape_polygon(CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * np.pi))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            gap = 2.0
            if not overlap and any(x0 < bx1 + gap and bx0 < x1 + gap and y0 < by1 + gap and by0 < y1 + gap
                                   for bx0, by0, bx1, by1 in boxes):
                continue
            mask = rasterize(poly, size, size)
            if mask.sum() < 16:
                continue
            paint(img, mask, shape_colour(rng, cls), rng)
            objs.append(Obj(cls, poly, mask))
            boxes.append((x0, y0, x1, y1))
            break
    img = img + rng.normal(0, rng.uniform(0.005, 0.04), size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), objs


def _rng(seed: int, task: int, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, task, split, index])


def _save_jpg(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, quality=95, subsampling=0)


# ---------------------------------------------------------------------------------------------------- writers
def write_coco(root: Path, p: Params) -> None:
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split_id, (split, n) in enumerate((('train', p.num_train), ('val', p.num_val))):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img, objs = render_scene(_rng(p.seed, 0, split_id, i), p.size, max_objects=4, overlap=False)
            name = f'{i:06d}.jpg'
            _save_jpg(img, root / split / name)
            images.append(dict(id=i + 1, file_name=name, height=p.size, width=p.size))
            for o in objs:
                x0, y0 = o.poly.min(0)
                x1, y1 = o.poly.max(0)
                x0, y0 = max(float(x0), 0.0), max(float(y0), 0.0)
                x1, y1 = min(float(x1), p.size), min(float(y1), p.size)
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=o.cls + 1, iscrowd=0,
                    area=float(o.mask.sum()),
                    bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    segmentation=[[round(float(v), 2) for v in o.poly.reshape(-1)]]))
        coco = dict(
            info=dict(description='sparsedense embedded demo dataset (synthetic shapes)', version=str(VERSION)),
            licenses=[], images=images, annotations=annotations,
            categories=[dict(id=c + 1, name=name, supercategory='shape') for c, name in enumerate(CLASSES)])
        with open(root / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump(coco, f)


def write_ade(root: Path, p: Params) -> None:
    for split_id, (split, n) in enumerate((('training', p.num_train), ('validation', p.num_val))):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, objs = render_scene(_rng(p.seed, 1, split_id, i), p.size, max_objects=6, overlap=True)
            label = np.ones((p.size, p.size), dtype=np.uint8)  # 1 = background (0 stays "other": ignored)
            for o in objs:
                label[o.mask] = o.cls + 2
            _save_jpg(img, root / 'images' / split / f'{i:06d}.jpg')
            Image.fromarray(label).save(root / 'annotations' / split / f'{i:06d}.png')


def make_demo_data(out: str | Path, params: Params = Params(), force: bool = False) -> Path:
    """Write both datasets under ``out`` unless a stamp with the same parameters is already there."""
    out = Path(out)
    stamp = out / 'params.json'
    want = json.dumps(asdict(params), sort_keys=True)
    if not force and stamp.is_file() and stamp.read_text() == want:
        print(f'[make_demo_data] {out} is up to date ({want})')
        return out
    for sub in ('coco', 'ade'):
        shutil.rmtree(out / sub, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    write_coco(out / 'coco', params)
    write_ade(out / 'ade', params)
    stamp.write_text(want)
    print(f'[make_demo_data] wrote {params.num_train}+{params.num_val} images of {params.size}px to '
          f'{out}/coco and {out}/ade')
    return out


def tree_digest(root: str | Path) -> str:
    """sha256 over the relative paths and bytes of every file under ``root`` (for determinism checks)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='data/demo', help='output folder (coco/ and ade/ are written inside)')
    ap.add_argument('--size', type=int, default=Params.size, help='image side in pixels')
    ap.add_argument('--num-train', type=int, default=Params.num_train)
    ap.add_argument('--num-val', type=int, default=Params.num_val)
    ap.add_argument('--seed', type=int, default=Params.seed)
    ap.add_argument('--force', action='store_true', help='regenerate even if up to date')
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.size < 32:
        sys.exit(f'--size must be >= 32, got {a.size}')
    if a.num_train < 1 or a.num_val < 1:
        sys.exit(f'--num-train and --num-val must be >= 1, got {a.num_train}, {a.num_val}')
    make_demo_data(a.out, Params(size=a.size, num_train=a.num_train, num_val=a.num_val, seed=a.seed), force=a.force)
    return 0


if __name__ == '__main__':
    sys.exit(main())
