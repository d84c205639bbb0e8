"""Run a detector or segmentor on an image or a folder of images and save the predictions drawn with OpenCV as PNG.

The library follows the config's ``default_scope``: mmdet (``init_detector`` / ``inference_detector``: boxes, class
names, scores, instance masks) or mmseg (``init_model`` / ``inference_model``: the label map blended over the
image with the dataset's palette). Without a checkpoint the weights are random (useful only to test plumbing).

    python tools/demo.py IMAGE_OR_FOLDER CONFIG [CHECKPOINT] [--out-dir work_dirs/demo] [--score-thr 0.3]
        [--opacity 0.5] [--device cpu] [--cfg-options k=v ...]
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import _checkpoint  # noqa: E402
import _runtime  # noqa: E402

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def list_images(path: str) -> list[str]:
    """The image itself, or the images of a folder (sorted, not recursive)."""
    if osp.isfile(path):
        return [path]
    if osp.isdir(path):
        files = sorted(osp.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
        if files:
            return files
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in folder '{path}'")
    raise FileNotFoundError(f"input '{path}' is neither an image nor a folder")


def palette_for(meta: dict | None, n: int) -> list[tuple[int, int, int]]:
    """RGB colour per class: the dataset's palette, else a fixed pseudo-random one."""
    pal = list((meta or {}).get('palette') or [])
    if len(pal) >= n:
        return [tuple(int(c) for c in p) for p in pal[:n]]
    rng = np.random.default_rng(0)
    return pal + [tuple(int(c) for c in rng.integers(40, 256, 3)) for _ in range(n - len(pal))]


def draw_detections(img_bgr: np.ndarray, pred, classes: tuple, meta: dict, score_thr: float) -> np.ndarray:
    """Masks (50% blend), boxes and 'class score' labels (colours from meta's palette) of the predictions with
    score >= score_thr; ``pred``: mmdet InstanceData with bboxes (N, 4) xyxy, labels (N,), scores (N,), masks."""
    out = img_bgr.copy()
    keep = pred.scores >= score_thr
    boxes = pred.bboxes[keep].cpu().numpy()
    labels = pred.labels[keep].cpu().numpy()
    scores = pred.scores[keep].cpu().numpy()
    masks = pred.masks[keep].cpu().numpy().astype(bool) if 'masks' in pred else None
    colours = palette_for(meta, max(len(classes), int(labels.max(initial=0)) + 1))
    for i in range(len(boxes)):
        colour = colours[labels[i]][::-1]  # RGB -> BGR
        if masks is not None:
            out[masks[i]] = (0.5 * out[masks[i]] + 0.5 * np.array(colour)).astype(np.uint8)
        x0, y0, x1, y1 = boxes[i].round().astype(int)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, 2)
        name = classes[labels[i]] if labels[i] < len(classes) else str(labels[i])
        cv2.putText(out, f'{name} {scores[i]:.2f}', (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1,
                    cv2.LINE_AA)
    return out


def draw_segmentation(img_bgr: np.ndarray, label_map: np.ndarray, palette: list, opacity: float) -> np.ndarray:
    """The label map (H, W) coloured by ``palette`` (RGB) and blended over the image with ``opacity``."""
    lut = np.zeros((max(len(palette), int(label_map.max()) + 1), 3), np.uint8)
    lut[:len(palette)] = np.array(palette, np.uint8)[:, ::-1]
    colour = lut[label_map]
    return cv2.addWeighted(img_bgr, 1 - opacity, colour, opacity, 0)


def main(argv=None) -> int:
    from mmengine.config import Config, DictAction
    from mmengine.utils import ProgressBar
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('input', help='an image file or a folder of images')
    ap.add_argument('config')
    ap.add_argument('checkpoint', nargs='?', default=None)
    ap.add_argument('--out-dir', default='work_dirs/demo')
    ap.add_argument('--score-thr', type=float, default=0.3, help='detections below this score are not drawn')
    ap.add_argument('--opacity', type=float, default=0.5, help='segmentation overlay opacity')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--trust-checkpoint', action='store_true',
                    help='allow full unpickling of CHECKPOINT when weights-only loading refuses it (a malicious file '
                    'runs code: only for files you trust)')
    ap.add_argument('--allow-partial-checkpoint', action='store_true',
                    help='load a checkpoint whose keys / shapes fit the model only partly (default: refuse it)')
    ap.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                    help='override config keys, e.g. model.test_cfg.rcnn.max_per_img=50')
    args = ap.parse_args(argv)
    try:
        images = list_images(args.input)
        if not osp.isfile(args.config):
            raise _runtime.ConfigCheckError(f"config file '{args.config}' does not exist")
        if args.checkpoint and not osp.isfile(args.checkpoint):
            raise _runtime.ConfigCheckError(f"checkpoint '{args.checkpoint}' does not exist")
        if args.checkpoint:  # weights-only (--trust-checkpoint: may fall back to full unpickling)
            _checkpoint.install_loader(*([args.checkpoint] if args.trust_checkpoint else []))
            _checkpoint.check_checkpoint(args.checkpoint)
        cfg = Config.fromfile(args.config)
        scope = _runtime.setup_scope(cfg)
        _runtime.check_cfg_options(cfg, args.cfg_options, scope)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
    except (FileNotFoundError, _runtime.ConfigCheckError, _checkpoint.CheckpointError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if scope == 'mmdet':
        from mmdet.apis import inference_detector, init_detector
        model = init_detector(cfg, None, device=args.device)
        infer = inference_detector
    else:
        from mmseg.apis import inference_model, init_model
        model = init_model(cfg, None, device=args.device)
        infer = inference_model
    if args.checkpoint:  # refused unless it fits the model (--allow-partial-checkpoint)
        try:
            meta = _checkpoint.load_into(model, args.checkpoint, args.allow_partial_checkpoint)
        except _checkpoint.CheckpointError as e:
            return _runtime.fail(e)
        if isinstance(meta.get('dataset_meta'), dict):
            model.dataset_meta = {k.lower(): v for k, v in meta['dataset_meta'].items()}
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)  # single process (SyncBN in mmseg's stock heads)
    meta = getattr(model, 'dataset_meta', None) or {}
    classes = tuple(meta.get('classes', ()))
    os.makedirs(args.out_dir, exist_ok=True)
    bar = ProgressBar(len(images))
    for path in images:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            print(f'\nwarning: cannot read {path}, skipped', file=sys.stderr)
            bar.update()
            continue
        result = infer(model, img)
        if scope == 'mmdet':
            drawn = draw_detections(img, result.pred_instances, classes, meta, args.score_thr)
        else:
            label_map = result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)
            drawn = draw_segmentation(img, label_map, palette_for(meta, len(classes) or int(label_map.max()) + 1),
                                      args.opacity)
        cv2.imwrite(osp.join(args.out_dir, osp.splitext(osp.basename(path))[0] + '.png'), drawn)
        bar.update()
    print(f'\nwrote {len(images)} images to {args.out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
