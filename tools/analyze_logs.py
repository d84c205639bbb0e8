"""Plot loss and metric curves from mmengine logs into one PNG (one panel per key, one line per log).

Inputs: mmengine's ``vis_data/scalars.json`` or ``<timestamp>.json`` (one JSON object per line), or a work dir
(its newest ``*/vis_data/scalars.json`` is used). Training lines carry ``step`` (iteration) with ``loss*`` / ``lr``;
validation lines carry the metrics (``coco/bbox_mAP``, ``mIoU``, ...) and are plotted at the iteration they
followed (mmengine stamps them with the epoch).

    python tools/analyze_logs.py LOG_OR_WORK_DIR [...] [--keys loss coco/bbox_mAP] [--out curves.png]
        [--legend run_a run_b]

Without ``--keys``: every loss key plus the accuracies and validation metrics found.
"""
from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import re
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

TRAIN_ONLY = {'lr', 'time', 'data_time', 'memory', 'iter', 'epoch', 'step', 'base_lr', 'grad_norm'}


def resolve_log(path: str) -> str:
    """A log file, or the newest ``*/vis_data/scalars.json`` (else ``*.json`` log) under a work dir."""
    if osp.isfile(path):
        return path
    if osp.isdir(path):
        found = sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
        found = found or sorted(glob.glob(osp.join(path, '*', 'vis_data', '*.json')))
        if found:
            return found[-1]
        raise FileNotFoundError(f"no */vis_data/scalars.json under '{path}'")
    raise FileNotFoundError(f"log '{path}' does not exist")


def _is_train_record(rec: dict) -> bool:
    return 'lr' in rec or any(k.startswith('loss') for k in rec)


def load_log(path: str) -> dict[str, tuple[list[float], list[float]]]:
    """key -> (iterations, values) for every numeric key of the log.

    Training lines are placed at their ``step``. mmengine writes validation lines with ``step`` = the epoch (and 0
    for iteration-based loops unless ``log_metric_by_epoch=False``), so a validation line is placed at the step of
    the training line logged just before it (its own ``step`` when there is none, e.g. a test-only log)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    last_train_step = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{n}: not a JSON line ({e})') from e
            step = rec.get('step', rec.get('iter'))
            if step is None:
                continue
            if _is_train_record(rec):
                last_train_step = step
            elif last_train_step is not None:
                step = last_train_step
            for k, v in rec.items():
                if k in ('step', 'iter', 'epoch') or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                xs, ys = series.setdefault(k, ([], []))
                xs.append(float(step))
                ys.append(float(v))
    if not series:
        raise ValueError(f'{path}: no numeric series with a step')
    return series


def default_keys(logs: list[dict]) -> list[str]:
    """Loss keys (``loss`` leading, then ``loss_*``, ``decode.loss_ce``, ...), then metric keys in first-seen order
    (training accuracies, validation metrics), without COCO's per-size
    and AP75 breakdowns (``*_s``, ``*_m``, ``*_l``, ``*_75``; ask for them with --keys)."""
    seen: list[str] = []
    for log in logs:
        for k in log:
            if k not in seen:
                seen.append(k)
    losses = sorted((k for k in seen if 'loss' in k), key=lambda k: (k != 'loss', k))
    metrics = [k for k in seen if 'loss' not in k and k not in TRAIN_ONLY and not re.search(r'_(s|m|l|75)$', k)]
    return losses + metrics


def plot(logs: list[dict], names: list[str], keys: list[str], out: str) -> None:
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for log, name in zip(logs, names):
            if key in log:
                xs, ys = log[key]
                ax.plot(xs, ys, marker='o' if len(xs) < 20 else None, ms=3, label=name)
        ax.set_title(key)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
        if len(logs) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('logs', nargs='+', help='scalars.json / json logs / work dirs')
    ap.add_argument('--keys', nargs='+', help='keys to plot (default: losses and validation metrics)')
    ap.add_argument('--legend', nargs='+', help='one name per log (default: the file paths)')
    ap.add_argument('--out', default='curves.png', help='PNG to write')
    args = ap.parse_args(argv)
    try:
        paths = [resolve_log(p) for p in args.logs]
        logs = [load_log(p) for p in paths]
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.legend and len(args.legend) != len(logs):
        print(f'error: --legend has {len(args.legend)} names for {len(logs)} logs', file=sys.stderr)
        return 2
    keys = args.keys or default_keys(logs)
    missing = [k for k in keys if not any(k in log for log in logs)]
    if missing:
        known = sorted(set().union(*logs))
        print(f'error: keys {missing} are in none of the logs; available: {known}', file=sys.stderr)
        return 2
    plot(logs, args.legend or paths, keys, args.out)
    print(f'wrote {args.out} ({len(keys)} panels: {", ".join(keys)})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
