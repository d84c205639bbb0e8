"""demo, browse_dataset, analyze_logs, benchmark, get_flops and slurm_train.sh on the embedded dataset.

One short real training run (3 iterations of the demo detector, tiny HWT) gives the log for analyze_logs and the
checkpoint for demo. The other tools run in-process (cheaper than a Python start per tool on 2 cores)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DET_CFG, SEG_CFG, TINY_ARCH, TOOLS, load_tool, run_tool

TINY = [TINY_ARCH]


@pytest.fixture(scope='module')
def det_run(demo_root, tmp_path_factory) -> Path:
    """Work dir of a 3-iteration training of the demo Mask R-CNN, validated at the end (a real mmengine log)."""
    work = tmp_path_factory.mktemp('misc_tools') / 'det'
    r = run_tool('train', DET_CFG, '--work-dir', work, '--cfg-options', *TINY, 'train_dataloader.batch_size=2',
                 'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=3', 'train_cfg.max_iters=3',
                 'train_cfg.val_interval=3', cwd=demo_root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (work / 'iter_3.pth').is_file()
    return work


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob('*.png'))


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.size > 0, f'{path} is not a readable image'
    return img


# ------------------------------------------------------------------------------------------------- analyze_logs
def test_analyze_logs_plots_losses_and_metrics_of_a_real_log(det_run, tmp_path):
    tool = load_tool('analyze_logs')
    log = tool.load_log(tool.resolve_log(str(det_run)))
    assert log['loss'][0] == [1.0, 2.0, 3.0]  # one point per logged iteration
    assert 'coco/bbox_mAP' in log and log['coco/bbox_mAP'][0] == [3.0]  # at the iteration it followed
    keys = tool.default_keys([log])
    assert keys[0] == 'loss' and 'loss_mask' in keys and 'coco/segm_mAP' in keys and 'lr' not in keys
    out = tmp_path / 'curves.png'
    assert tool.main([str(det_run), str(det_run), '--legend', 'a', 'b', '--out', str(out)]) == 0
    img = _read(out)
    assert img.shape[0] > 200 and img.std() > 10  # drawn panels, not a blank canvas


def test_analyze_logs_rejects_unknown_keys_and_missing_logs(det_run, tmp_path, capsys):
    tool = load_tool('analyze_logs')
    assert tool.main([str(det_run), '--keys', 'loss', 'no_such_key', '--out', str(tmp_path / 'x.png')]) == 2
    assert 'no_such_key' in capsys.readouterr().err
    assert tool.main([str(tmp_path / 'missing'), '--out', str(tmp_path / 'y.png')]) == 2
    assert not (tmp_path / 'x.png').exists()


# ------------------------------------------------------------------------------------------------- demo
def test_demo_draws_detections_with_a_trained_checkpoint(det_run, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    images = demo_root / 'data/demo/coco/val'
    out = tmp_path / 'det'
    rc = load_tool('demo').main([str(images), str(DET_CFG), str(det_run / 'iter_3.pth'), '--out-dir', str(out),
                                 '--score-thr', '0', '--cfg-options', *TINY])
    assert rc == 0
    inputs = sorted(images.glob('*.jpg'))
    drawn = _pngs(out)
    assert [p.stem for p in drawn] == [p.stem for p in inputs]
    for src, dst in zip(inputs, drawn):
        a, b = _read(src), _read(dst)
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1, f'nothing drawn on {dst.name}'


def test_demo_draws_segmentation_overlay(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    image = sorted((demo_root / 'data/demo/ade/images/validation').glob('*.jpg'))[0]
    out = tmp_path / 'seg'
    assert load_tool('demo').main([str(image), str(SEG_CFG), '--out-dir', str(out), '--cfg-options', *TINY]) == 0
    (png, ) = _pngs(out)
    a, b = _read(image), _read(png)
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 1


def test_demo_names_a_missing_input(tmp_path, capsys):
    assert load_tool('demo').main([str(tmp_path / 'nope.jpg'), str(DET_CFG)]) == 2
    assert 'nope.jpg' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- browse_dataset
ZOO_SEG = TOOLS.parent / 'configs/nat/upernet_nat-t_8xb2-160k_ade20k-512x512.py'


@pytest.mark.parametrize('cfg', ['det', 'seg', 'zoo-seg'])
def test_browse_dataset_draws_ground_truth(cfg, demo_root, tmp_path, monkeypatch):
    """The demo configs' training data, and a zoo UperNet's (512 crops) pointed at the embedded ADE20K layout."""
    monkeypatch.chdir(demo_root)
    out = tmp_path / 'browse'
    args = {'det': [str(DET_CFG)], 'seg': [str(SEG_CFG)],
            'zoo-seg': [str(ZOO_SEG), '--cfg-options', f'train_dataloader.dataset.data_root={demo_root}/data/demo/ade']
            }[cfg]
    assert load_tool('browse_dataset').main([*args, '--num', '3', '--out-dir', str(out)]) == 0
    pngs = _pngs(out)
    assert len(pngs) == 3
    for png in pngs:
        img = _read(png)
        assert img.shape[0] >= 64 and img.std() > 5


# ------------------------------------------------------------------------------------------------- benchmark
def test_benchmark_measures_detector_and_segmentor_side_by_side(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(demo_root)
    out = tmp_path / 'bench.json'
    rc = load_tool('benchmark').main([str(DET_CFG), str(SEG_CFG), '--shape', '64', '64', '--batch-size', '2',
                                      '--iters', '1', '--warmup', '0', '--device', 'cpu', '--out', str(out),
                                      '--chart', str(tmp_path / 'bench.png'), '--cfg-options', *TINY])
    assert rc == 0
    res = json.loads(out.read_text())['results']
    assert [r['scope'] for r in res] == ['mmdet', 'mmseg']
    for r in res:
        assert r['infer']['fps'] > 0 and r['train']['median_ms'] > 0 and r['train']['peak_mb'] > 0
        assert r['backbone']['median_ms'] > 0 and r['backbone']['share'] == pytest.approx(
            r['backbone']['median_ms'] / r['train']['median_ms'])
        assert r['compiled_backbone'] is False
    assert _read(tmp_path / 'bench.png').std() > 5
    table = capsys.readouterr().out
    assert 'mask-rcnn_hwt-demo_fpn_shapes-coco' in table and 'upernet_hwt-demo_shapes-ade-128x128' in table
    header = next(line for line in table.splitlines() if line.startswith('config '))
    assert [c.strip() for c in header.split('|')][-6:] == ['train GPU ms', 'train img/s', 'train peak MB',
                                                          'backbone ms', 'rest ms', 'backbone share']


# ------------------------------------------------------------------------------------------------- get_flops
def _brute_keys(n, allowed):
    return sum(1 for i in range(n) for j in range(n) if allowed(i, j))


@pytest.mark.parametrize('n', [1, 7, 49, 50, 130])
def test_flop_counts_of_1d_patterns_match_enumeration(n):
    flops = load_tool('get_flops')
    for window in (1, 4, 49):
        assert flops.window_keys(n, window) == _brute_keys(n, lambda i, j: i // window == j // window)
        s = window - window // 2
        assert flops.window_keys(n, window, True) == _brute_keys(n, lambda i, j: (i + s) // window == (j + s) // window)
        assert flops.band_keys(n, window) == _brute_keys(n, lambda i, j: abs(i - j) <= window // 2)


@pytest.mark.parametrize('h, w, k, d', [(1, 1, 7, 1), (13, 7, 3, 1), (20, 9, 7, 1), (20, 9, 3, 4)])
def test_flop_count_of_2d_neighbourhood_matches_enumeration(h, w, k, d):
    def keys_per_query(y, x):  # NATTEN: window of its dilation sub-grid, clamped inside
        rows = [r for r in range(y % d, h, d)]
        cols = [c for c in range(x % d, w, d)]
        return min(k, len(rows)) * min(k, len(cols))
    expected = sum(keys_per_query(y, x) for y in range(h) for x in range(w))
    assert load_tool('get_flops').na2d_keys(h, w, k, d) == expected


def test_get_flops_counts_the_hilbert_window_attention_of_hwt(demo_root, monkeypatch, capsys):
    """Demo HWT (embed 32, heads [1,2,4,8], one block per stage) at 64 x 64: stages of 16x16, 8x8, 4x4, 2x2 tokens,
    49-token windows: 2 x C x sum(chunk^2) = 2 * (32*12126 + 64*2626 + 128*256 + 256*16) MACs."""
    monkeypatch.chdir(demo_root)
    tool = load_tool('get_flops')
    cfg, scope = tool.load_cfg(str(DET_CFG), {'model.backbone.arch.depths': [1, 1, 1, 1]})
    r = tool.count(cfg, scope, (64, 64))
    assert r['per_function'] == {'hilbert_window_attention': 2 * (32 * 12126 + 64 * 2626 + 128 * 256 + 256 * 16)}
    assert r['traced_macs'] > 0 and r['total_macs'] == r['traced_macs'] + r['sparse_attention_macs']
    import sparse_ops
    assert sparse_ops.hilbert_window_attention.__name__ == 'hilbert_window_attention'  # restored afterwards
    assert tool.main([str(DET_CFG), '--shape', '64', '64', '--cfg-options', *TINY]) == 0
    assert 'sparse attention' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- slurm
def test_slurm_train_builds_one_task_per_gpu(tmp_path):
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'srun').write_text('#!/usr/bin/env bash\necho "srun $*"\n')
    (fake / 'srun').chmod(0o755)
    env = dict(os.environ, PATH=f'{fake}:{os.environ["PATH"]}', GPUS='4', SRUN_ARGS='--quotatype=auto')
    r = subprocess.run(['bash', str(TOOLS / 'slurm_train.sh'), 'gpu', 'job1', str(DET_CFG), str(tmp_path / 'w'),
                        '--amp'], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    for part in ('-p gpu', '--job-name=job1', '--gres=gpu:4', '--ntasks=4', '--ntasks-per-node=4',
                 '--quotatype=auto', 'tools/train.py', str(DET_CFG), '--launcher=slurm', '--amp',
                 f'--work-dir={tmp_path / "w"}'):
        assert part in line, (part, line)
    bad = subprocess.run(['bash', str(TOOLS / 'slurm_train.sh'), 'gpu'], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and 'PARTITION' in bad.stderr


def test_gpu_validate_names_existing_tests_and_refuses_a_cpu_machine():
    """tools/gpu_validate.sh: every test file it runs exists (a rename would silently shrink the GPU check), and on a
    machine without CUDA, or with a misspelt stage, it stops with one line and status 2."""
    script = TOOLS / 'gpu_validate.sh'
    named = set(re.findall(r'tests/\S+?\.py', script.read_text()))
    assert len(named) >= 9 and all((TOOLS.parent / p).is_file() for p in named), named
    for args, says in (([], 'sees no CUDA device'), (['tset'], "stage must be tests, train or all, got 'tset'")):
        r = subprocess.run(['bash', str(script), *args], capture_output=True, text=True, timeout=60,
                           env={**os.environ, 'PYTHON': sys.executable})
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
