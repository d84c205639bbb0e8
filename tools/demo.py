"""Run a detector or segmentor on an image or a folder of images and save the predictions drawn as PNG.

The library follows the config's ``default_scope``: mmdet (``init_detector`` / ``inference_detector``: boxes, class
names, scores, instance masks) or mmseg (``init_model`` / ``inference_model``: the label map blended over the
image with the dataset's palette, class names on the regions). Drawn by the config's visualizer (mmdet
``DetLocalVisualizer`` / mmseg ``SegLocalVisualizer``), as ``tools/test.py --show-dir`` draws. Without a
checkpoint the weights are random (useful only to test plumbing).

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

import _cfg  # noqa: E402
import _checkpoint  # noqa: E402
import _necks  # noqa: E402
import _runtime  # noqa: E402
import _vis  # noqa: E402

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


def dataset_meta(cfg, scope: str, model, from_checkpoint: bool) -> dict:
    """Class names and palette for drawing: the checkpoint's (``model.dataset_meta``), else the config's test
    dataset (its class's METAINFO updated by the config's ``metainfo``); without a checkpoint mmdet would name the
    classes after COCO's whatever the config says."""
    model_meta = dict(getattr(model, 'dataset_meta', None) or {})
    if from_checkpoint and model_meta.get('classes'):
        return model_meta
    from mmengine.registry import DATASETS, DefaultScope
    ds = cfg.test_dataloader.dataset
    while 'dataset' in ds:  # wrappers
        ds = ds.dataset
    with DefaultScope.overwrite_default_scope(scope):
        cls = DATASETS.get(ds.type)
    meta = dict(getattr(cls, 'METAINFO', None) or {})
    meta.update(ds.get('metainfo') or {})
    return meta if meta.get('classes') else model_meta


def main(argv=None) -> int:
    from mmengine.config import DictAction
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
        if args.checkpoint and not osp.isfile(args.checkpoint):
            raise _runtime.ConfigCheckError(f"checkpoint '{args.checkpoint}' does not exist")
        if args.checkpoint:  # weights-only (--trust-checkpoint: may fall back to full unpickling)
            _checkpoint.install_loader(*([args.checkpoint] if args.trust_checkpoint else []))
            _checkpoint.check_checkpoint(args.checkpoint)
        cfg, scope = _cfg.read_config(args.config, args.cfg_options)
        _necks.check_neck_widths(cfg, scope)
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
    os.makedirs(args.out_dir, exist_ok=True)
    visualizer = _vis.build_visualizer(cfg, scope, args.out_dir, **({} if scope == 'mmdet' else
                                                                    dict(alpha=args.opacity)))
    visualizer.dataset_meta = dataset_meta(cfg, scope, model, from_checkpoint=bool(args.checkpoint))
    bar = ProgressBar(len(images), file=sys.stdout)
    written, skipped = 0, []
    for path in images:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            skipped.append(path)
            bar.update()
            continue
        result = infer(model, img)
        name = osp.splitext(osp.basename(path))[0]
        extra = dict(pred_score_thr=args.score_thr) if scope == 'mmdet' else {}
        visualizer.add_datasample(name, img[..., ::-1].copy(), result, draw_gt=False, show=False,
                                  out_file=osp.join(args.out_dir, name + '.png'), **extra)
        written += 1
        bar.update()
    print(f'\nwrote {written} images to {args.out_dir}')
    if skipped:
        print(f"warning: {len(skipped)} unreadable file(s) skipped: {', '.join(skipped)}", file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
