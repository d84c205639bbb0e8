"""Print the `make demo` results (from tools/test.py's test_metrics.json) and check that the models learned.

    python tools/demo_summary.py --work-dir work_dirs/demo [--min-bbox-map 0.25] [--min-miou 0.50]

Exits 1 when a metric is missing or below its threshold.
"""
from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--work-dir', default='work_dirs/demo')
    ap.add_argument('--min-bbox-map', type=float, default=0.25)
    ap.add_argument('--min-miou', type=float, default=0.50)
    a = ap.parse_args(argv)

    def metrics(task):
        path = osp.join(a.work_dir, task, 'test_metrics.json')
        return json.load(open(path)) if osp.isfile(path) else {}

    det, seg = metrics('det'), metrics('seg')
    rows = [('bbox mAP', det.get('coco/bbox_mAP'), a.min_bbox_map),
            ('bbox mAP@0.5', det.get('coco/bbox_mAP_50'), None),
            ('segm mAP', det.get('coco/segm_mAP'), None),
            ('mIoU (%)', seg.get('mIoU'), a.min_miou * 100),
            ('aAcc (%)', seg.get('aAcc'), None)]
    ok = True
    print('\n==== sparsedense demo: HWT on the embedded shapes dataset (validation split) ====')
    for name, value, floor in rows:
        if value is None:
            print(f'  {name:14s} missing')
            ok = ok and floor is None
            continue
        check = '' if floor is None else (f'  >= {floor:g} ok' if value >= floor else f'  < {floor:g} FAILED')
        ok = ok and (floor is None or value >= floor)
        print(f'  {name:14s} {value:8.4f}{check}')
    vis = osp.join(a.work_dir, 'det', 'vis')
    det_png = sorted(glob.glob(osp.join(vis, '*.png')) + glob.glob(osp.join(vis, '*.jpg')))
    seg_png = sorted(glob.glob(osp.join(a.work_dir, 'seg', 'vis', '**', '*.png'), recursive=True))
    print(f'  predictions drawn: {len(det_png)} images in {osp.join(a.work_dir, "det", "vis")}, '
          f'{len(seg_png)} in {osp.join(a.work_dir, "seg", "vis", "vis_data", "vis_image")}')
    start = osp.join(a.work_dir, '.start')
    if osp.isfile(start):
        print(f'  wall time: {time.time() - float(open(start).read()):.0f} s')
    verdict = 'learned (all thresholds met)' if ok else 'FAILED: a metric is missing or below its threshold'
    print('  result: ' + verdict)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
