"""What tools/test.py writes or shows besides the metrics, as mmdet's and mmseg's own test.py do.

- ``set_out(cfg, scope, out)``: ``--out preds.pkl`` dumps the raw predictions (mmdet ``DumpDetResults``, mmseg
  ``mmengine.DumpResults``: for segmentation that holds per-class logits of every pixel, large); ``--out DIR``
  (segmentation) writes one label-map PNG per test image, named after the image, with mmseg's ``IoUMetric``
  (``output_dir``): the predicted classes, shifted back by +1 when the dataset uses ``reduce_zero_label`` (the
  submission format of ADE20K), metrics computed as usual.
- ``set_drawing(cfg, scope, show_dir, show, wait_time, score_thr)``: the config's visualization hook draws every
  test image; ``--show-dir`` saves the drawings, ``--show`` opens a window per image for ``--wait-time`` seconds,
  refused in one line when the machine has no display.
"""
from __future__ import annotations

import os
import os.path as osp
import sys

from mmengine.config import ConfigDict

import _runtime

PKL = ('.pkl', '.pickle')


def _evaluators(cfg) -> list:
    ev = cfg.test_evaluator
    return list(ev) if isinstance(ev, (list, tuple)) else [ev]


def set_out(cfg, scope: str, out: str) -> None:
    if out.endswith(PKL):
        dump = ConfigDict(type='DumpDetResults' if scope == 'mmdet' else 'mmengine.DumpResults', out_file_path=out)
        cfg.test_evaluator = _evaluators(cfg) + [dump]
        return
    if scope == 'mmdet':
        raise _runtime.ConfigCheckError(f"--out: expected a .pkl file for detection results, got '{out}'")
    ious = [e for e in _evaluators(cfg) if isinstance(e, dict) and e.get('type') in ('IoUMetric', 'mmseg.IoUMetric')]
    if not ious:
        types = [e.get('type') if isinstance(e, dict) else e for e in _evaluators(cfg)]
        raise _runtime.ConfigCheckError(f"--out {out}: label maps are written by mmseg's IoUMetric, the config's "
                                        f'test_evaluator is {types}; use --out preds.pkl')
    if osp.isfile(out):
        raise _runtime.ConfigCheckError(f"--out {out}: is a file; give a folder for the label-map PNGs or a .pkl")
    for e in ious:
        e['output_dir'] = osp.abspath(out)  # format_only stays False: the metrics are computed as well


def has_display() -> bool:
    """A window can be opened: always on macOS / Windows, on other systems when DISPLAY or WAYLAND_DISPLAY is set."""
    if sys.platform in ('darwin', 'win32'):
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def set_drawing(cfg, scope: str, show_dir: str | None, show: bool, wait_time: float, score_thr: float) -> None:
    if not (show_dir or show):
        return
    vis = cfg.default_hooks.get('visualization')
    if vis is None:
        raise _runtime.ConfigCheckError(f"{'--show-dir' if show_dir else '--show'}: the config has no "
                                        'default_hooks.visualization')
    if show and not has_display():
        raise _runtime.ConfigCheckError('--show: this machine has no display (DISPLAY is not set); save the '
                                        'drawings with --show-dir DIR instead')
    vis.draw = True
    if show:
        vis.show, vis.wait_time = True, wait_time
    if scope == 'mmdet':
        vis.score_thr = score_thr
        if show_dir:
            vis.test_out_dir = osp.abspath(show_dir)  # absolute, so the hook does not nest it under work_dir
    else:
        vis.interval = 1
        if show_dir:
            cfg.visualizer.save_dir = osp.abspath(show_dir)
