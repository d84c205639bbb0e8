"""Checkpoints through the tools (subprocesses): no code runs from a checkpoint on any loading path, nothing is
lost when a save is killed, damage is detected, a checkpoint of another model is refused."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DET_CFG, SEG_CFG, SEG_TINY, TINY_ARCH, TOOLS, run_tool, tool_env
from test_checkpoint_files import evil_checkpoint


def _one_error(r) -> str:
    """The single ``error:`` line of a tool that stopped (exit 2, no traceback)."""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert r.returncode == 2 and len(errors) == 1 and 'Traceback' not in r.stderr, \
        f'rc={r.returncode}\n{r.stderr[-3000:]}'
    return errors[0]


def _copy(work: Path, tmp_path: Path, name: str = 'w') -> Path:
    dst = tmp_path / name
    shutil.copytree(work, dst)
    last = dst / 'last_checkpoint'
    last.write_text(last.read_text().replace(str(work), str(dst)))  # it names an absolute path
    return dst


# ------------------------------------------------------------------------------------------------- no code runs
@pytest.mark.parametrize('path', ['test.py CKPT', 'demo.py CKPT', '--resume PATH', '--resume (planted in work dir)',
                                  'load_from in work dir', 'init_cfg Pretrained in work dir'])
def test_malicious_checkpoint_runs_nothing(demo_root, tmp_path, path):
    marker = tmp_path / 'pwned'
    work = tmp_path / 'work'
    work.mkdir()
    evil = evil_checkpoint(work / 'iter_8.pth', marker)
    train = ['--work-dir', work, '--cfg-options', *SEG_TINY, 'train_cfg.max_iters=2']
    if path == 'test.py CKPT':
        r = run_tool('test', SEG_CFG, evil, '--work-dir', work, '--cfg-options', TINY_ARCH, cwd=demo_root)
    elif path == 'demo.py CKPT':
        r = run_tool('demo', demo_root / 'data/demo/ade/images/validation', SEG_CFG, evil, '--out-dir', tmp_path / 'o',
                     '--cfg-options', TINY_ARCH, cwd=demo_root)
    elif path == '--resume PATH':
        r = run_tool('train', SEG_CFG, '--resume', evil, *train, cwd=demo_root)
    elif path == '--resume (planted in work dir)':
        (work / 'last_checkpoint').write_text(str(evil))
        r = run_tool('train', SEG_CFG, '--resume', *train, cwd=demo_root)
    elif path == 'load_from in work dir':
        r = run_tool('train', SEG_CFG, *train, f'load_from={evil}', cwd=demo_root)
    else:  # read by mmengine's PretrainedInit while the model initialises, inside runner.train()
        r = run_tool('train', SEG_CFG, *train, 'model.backbone.init_cfg.type=Pretrained',
                     f'model.backbone.init_cfg.checkpoint={evil}', cwd=demo_root)
    err = _one_error(r)
    assert 'iter_8.pth' in err and 'cannot be read weights-only' in err and '--trust-checkpoint' in err, err
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------- written safely
def test_train_checkpoints_load_weights_only_and_carry_a_record(seg_work):
    for it in (2, 4):
        path = seg_work / f'iter_{it}.pth'
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        assert ckpt['meta']['iter'] == it and 'optimizer' in ckpt and 'message_hub' in ckpt
        assert (seg_work / f'iter_{it}.pth.sha256.json').is_file()
    assert (seg_work / 'last_checkpoint').read_text().strip().endswith('iter_4.pth')


def _resume(work: Path, demo_root: Path, *options: str):
    """train.py --resume in ``work`` up to iteration 6 (``options``: more --cfg-options)."""
    return run_tool('train', SEG_CFG, '--work-dir', work, '--resume', '--cfg-options', *SEG_TINY,
                    'train_cfg.max_iters=6', *options, cwd=demo_root)


def _zero_4k(path: Path) -> None:
    """4 KiB in the middle of the file zeroed, starting at the first non-zero byte there (a checkpoint can hold
    long runs of zeros: optimizer state of bias-table entries no input reaches)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    start += next((i for i, b in enumerate(data[start:]) if b), 0)
    assert any(data[start:start + 4096]), 'no non-zero byte after the middle of the file'
    data[start:start + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def test_damaged_newest_checkpoint_falls_back_with_a_warning(seg_work, demo_root, tmp_path):
    work = _copy(seg_work, tmp_path)
    _zero_4k(work / 'iter_4.pth')
    r = _resume(work, demo_root)
    assert r.returncode == 0, r.stderr[-3000:]
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith('warning: --resume')]
    assert len(warn) == 1 and 'resuming from iter_2.pth (step 2)' in warn[0] and 'iter_4.pth: its SHA-256' in warn[0]
    assert 'resumed epoch: 0, iter: 2' in r.stdout + r.stderr


def test_damaged_resume_path_is_one_line(seg_work, demo_root, tmp_path):
    work = _copy(seg_work, tmp_path)
    _zero_4k(work / 'iter_4.pth')
    err = _one_error(run_tool('train', SEG_CFG, '--work-dir', work, '--resume', work / 'iter_4.pth',
                              '--cfg-options', *SEG_TINY, cwd=demo_root))
    assert "iter_4.pth' is damaged: its SHA-256" in err


def test_empty_last_checkpoint_is_one_line(seg_work, demo_root, tmp_path):
    work = _copy(seg_work, tmp_path)
    (work / 'last_checkpoint').write_text('')
    r = _resume(work, demo_root)
    assert r.returncode == 0, r.stderr[-3000:]
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith('warning: --resume')]
    assert len(warn) == 1 and 'last_checkpoint is empty' in warn[0], r.stderr[-2000:]
    assert 'resumed epoch: 0, iter: 4' in r.stdout + r.stderr
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'last_checkpoint').write_text('')
    err = _one_error(_resume(empty, demo_root))
    assert 'has a last_checkpoint file but no checkpoint' in err


# ------------------------------------------------------------------------------------------------- killed saves
KILLER = '''
import os, pathlib, runpy, signal, sys
moment = os.environ['KILL_AT']
real_fsync, real_replace, real_unlink = os.fsync, os.replace, pathlib.Path.unlink

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def fsync(fd):  # 'write': the new checkpoint's temporary file is half written
    if moment == 'write' and os.path.basename(os.readlink(f'/proc/self/fd/{fd}')).startswith('.iter_4.pth.tmp'):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        die()
    return real_fsync(fd)

def replace(src, dst, *a, **kw):
    name = os.path.basename(dst)
    if moment == 'record' and name == 'iter_4.pth.sha256.json':  # complete, its record not in place yet
        die()
    if moment == 'rename' and name == 'iter_4.pth':  # complete and recorded, not renamed yet
        die()
    if moment == 'last' and name == 'last_checkpoint' and open(src).read().endswith('iter_4.pth'):
        die()  # the old checkpoint is deleted, last_checkpoint still names it
    return real_replace(src, dst, *a, **kw)

def unlink(self, *a, **kw):
    if moment == 'delete' and self.name == 'iter_2.pth':  # the new one is in place, the old not yet deleted
        die()
    return real_unlink(self, *a, **kw)

os.fsync, os.replace, pathlib.Path.unlink = fsync, replace, unlink
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.mark.parametrize('moment, resumed', [
    ('write', 2),
    pytest.param('record', 2, marks=pytest.mark.slow),
    pytest.param('rename', 2, marks=pytest.mark.slow),
    pytest.param('delete', 4, marks=pytest.mark.slow),
    pytest.param('last', 4, marks=pytest.mark.slow),
])
def test_kill_during_save_then_resume(demo_root, tmp_path, moment, resumed):
    work = tmp_path / 'w'
    killer = tmp_path / 'killer.py'
    killer.write_text(KILLER)
    first = subprocess.run([sys.executable, str(killer), str(TOOLS / 'train.py'), str(SEG_CFG), '--work-dir',
                            str(work), '--cfg-options', *SEG_TINY, 'train_cfg.max_iters=6',
                            'default_hooks.checkpoint.max_keep_ckpts=1'],
                           cwd=demo_root, env=tool_env(KILL_AT=moment), capture_output=True, text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    r = _resume(work, demo_root, 'default_hooks.checkpoint.max_keep_ckpts=1')
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'resumed epoch: 0, iter: {resumed}' in r.stdout + r.stderr, r.stderr[-3000:]
    assert (work / 'last_checkpoint').read_text().strip().endswith('iter_6.pth')
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_6.pth']  # max_keep_ckpts=1 holds again
    assert torch.load(work / 'iter_6.pth', weights_only=True)['meta']['iter'] == 6
    assert not list(work.glob('.*tmp*'))  # the killed write's temporary file was cleaned up


# ------------------------------------------------------------------------------------------------- fit check
@pytest.mark.slow  # four tool runs; test_demo_refuses_a_foreign_checkpoint is the fast representative
def test_foreign_checkpoint_is_refused_unless_partial_is_asked(seg_work, demo_root, tmp_path):
    foreign = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {'classifier.weight': torch.zeros(10, 3)}}, foreign)
    err = _one_error(run_tool('test', SEG_CFG, foreign, '--work-dir', tmp_path / 't', '--cfg-options', TINY_ARCH,
                              cwd=demo_root))
    assert "foreign.pth' does not fit the model" in err and '1 unexpected' in err and 'classifier.weight' in err
    # the detector config with the segmentor's checkpoint (the case): refused, counts and names
    err = _one_error(run_tool('test', DET_CFG, seg_work / 'iter_4.pth', '--work-dir', tmp_path / 't',
                              '--cfg-options', TINY_ARCH, cwd=demo_root))
    assert 'missing' in err and 'unexpected' in err and 'decode_head.' in err and 'neck.' in err
    # another depth: its own mis-fit (missing blocks)
    err = _one_error(run_tool('test', SEG_CFG, seg_work / 'iter_4.pth', '--work-dir', tmp_path / 't', cwd=demo_root))
    assert 'missing' in err and 'backbone.layers.' in err
    r = run_tool('test', SEG_CFG, foreign, '--allow-partial-checkpoint', '--work-dir', tmp_path / 't',
                 '--cfg-options', TINY_ARCH, cwd=demo_root)
    assert r.returncode == 0 and 'warning: --allow-partial-checkpoint' in r.stderr, r.stderr[-3000:]


def test_demo_refuses_a_foreign_checkpoint(seg_work, demo_root, tmp_path):
    err = _one_error(run_tool('demo', demo_root / 'data/demo/coco/val', DET_CFG, seg_work / 'iter_4.pth',
                              '--out-dir', tmp_path / 'o', '--cfg-options', TINY_ARCH, cwd=demo_root))
    assert 'does not fit the model' in err
    r = run_tool('demo', demo_root / 'data/demo/ade/images/validation', SEG_CFG, seg_work / 'iter_4.pth',
                 '--out-dir', tmp_path / 'o', '--cfg-options', TINY_ARCH, cwd=demo_root)
    assert r.returncode == 0 and len(list((tmp_path / 'o').glob('*.png'))) == 4, r.stderr[-3000:]


def test_debug_env_shows_the_traceback(demo_root, tmp_path):
    foreign = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {'classifier.weight': torch.zeros(10, 3)}}, foreign)
    r = run_tool('test', SEG_CFG, foreign, '--work-dir', tmp_path / 't', '--cfg-options', TINY_ARCH, cwd=demo_root,
                 env={'SPARSEDENSE_DEBUG': '1'})
    assert r.returncode != 0 and 'Traceback' in r.stderr and 'CheckpointError' in r.stderr
    assert os.environ.get('SPARSEDENSE_DEBUG') is None
