"""Smoke train + test of the demo configs on a tiny embedded dataset, including SIGKILL and --resume."""
from __future__ import annotations

import json
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import DET_CFG, SEG_CFG, TINY_ARCH, TOOLS, run_tool, tool_env

# a few iterations with 2 images of 64 px and a 1-block-per-stage HWT; validation only at the end
SMOKE = [TINY_ARCH, 'train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
         'default_hooks.checkpoint.interval=2']


def _ckpt_iter(path: str | Path) -> int:
    m = re.search(r'iter_(\d+)\.pth$', str(path).strip())
    assert m, f'unexpected checkpoint name {path!r}'
    return int(m.group(1))


def _explain(r) -> str:
    return f'rc={r.returncode}\n--- stdout (tail) ---\n{r.stdout[-3000:]}\n--- stderr (tail) ---\n{r.stderr[-3000:]}'


def test_det_train_killed_resumes_from_last_checkpoint_then_tests(demo_root, tmp_path):
    work = tmp_path / 'det'
    log = open(tmp_path / 'first_run.log', 'w')
    first = subprocess.Popen(
        [sys.executable, str(TOOLS / 'train.py'), str(DET_CFG), '--work-dir', str(work), '--cfg-options', *SMOKE,
         'train_cfg.max_iters=200', 'train_cfg.val_interval=200'],
        cwd=demo_root, stdout=log, stderr=subprocess.STDOUT, env=tool_env())
    marker = work / 'last_checkpoint'
    deadline = time.time() + 240
    while not marker.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    alive = first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    assert alive and marker.is_file(), (tmp_path / 'first_run.log').read_text()[-3000:]
    assert first.returncode == -signal.SIGKILL
    killed_at = _ckpt_iter(marker.read_text())
    assert killed_at < 200

    final_iter = killed_at + 2
    r = run_tool('train', DET_CFG, '--work-dir', work, '--resume', '--cfg-options', *SMOKE,
                 f'train_cfg.max_iters={final_iter}', f'train_cfg.val_interval={final_iter}', cwd=demo_root)
    out = r.stdout + r.stderr
    assert r.returncode == 0, _explain(r)
    assert f'resumed epoch: 0, iter: {killed_at}' in out, _explain(r)
    logged = [int(i) for i in re.findall(rf'Iter\(train\) \[\s*(\d+)/{final_iter}\]', out)]
    assert logged == list(range(killed_at + 1, final_iter + 1)), _explain(r)  # continued, not restarted
    assert 'coco/bbox_mAP' in out  # the end-of-training validation ran
    final = work / f'iter_{final_iter}.pth'
    assert _ckpt_iter(marker.read_text()) == final_iter and final.is_file()
    ckpt = torch.load(final, map_location='cpu', weights_only=True)  # plain training state
    assert ckpt['meta']['iter'] == final_iter

    # test.py on the checkpoint train.py wrote (read weights-only), drawing and dumping predictions
    show, pkl = tmp_path / 'vis', tmp_path / 'preds.pkl'
    r = run_tool('test', DET_CFG, final, '--work-dir', work, '--show-dir', show, '--out', pkl,
                 '--cfg-options', TINY_ARCH, cwd=demo_root)
    assert r.returncode == 0, _explain(r)
    metrics = json.loads((work / 'test_metrics.json').read_text())
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    assert len(list(show.glob('*.png'))) == 4  # every validation image drawn, as PNG
    with open(pkl, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 4 and 'pred_instances' in preds[0]


def test_seg_train_then_test_draws_pngs(demo_root, tmp_path):
    work = tmp_path / 'seg'
    r = run_tool('train', SEG_CFG, '--work-dir', work, '--cfg-options', *SMOKE, 'train_cfg.max_iters=4',
                 'train_cfg.val_interval=4', cwd=demo_root)
    assert r.returncode == 0, _explain(r)
    assert 'mIoU' in r.stdout + r.stderr
    last = (work / 'last_checkpoint').read_text().strip()
    assert _ckpt_iter(last) == 4

    show = tmp_path / 'vis'
    r = run_tool('test', SEG_CFG, last, '--work-dir', work, '--show-dir', show, '--cfg-options', TINY_ARCH,
                 cwd=demo_root)
    assert r.returncode == 0, _explain(r)
    metrics = json.loads((work / 'test_metrics.json').read_text())
    assert 0.0 <= metrics['mIoU'] <= 100.0 and 0.0 <= metrics['aAcc'] <= 100.0
    pngs = list(show.rglob('*.png'))
    assert len(pngs) == 4, pngs
