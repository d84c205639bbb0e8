"""The checkpoint file layer of the tools (``tools/_checkpoint.py``, ``tools/_checkpoint_hooks.py``), in-process:
weights-only loading, atomic writes and their integrity record, damage detection, the resume choice, plain
training state, the fit check."""
from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_tool

ck = load_tool('_checkpoint')


class Evil:
    """Unpickling this object runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': Evil(marker)}, path)
    return path


@pytest.fixture
def loader(monkeypatch):
    """mmengine's loader scheme table restored after the test; a fresh trusted set."""
    from mmengine.runner.checkpoint import CheckpointLoader
    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes))
    monkeypatch.setattr(ck, '_TRUSTED', set())
    return CheckpointLoader


def test_malicious_checkpoint_is_refused_by_every_entry_point(tmp_path, loader):
    from mmengine.runner.checkpoint import load_checkpoint
    marker = tmp_path / 'pwned'
    (tmp_path / 'work').mkdir()
    evil = evil_checkpoint(tmp_path / 'work' / 'iter_2.pth', marker)
    ck.install_loader()
    with pytest.raises(ck.CheckpointError, match=r"iter_2\.pth' cannot be read weights-only.*--trust-checkpoint"):
        ck.check_checkpoint(str(evil))  # the tools' preflight (opcode scan, nothing runs)
    with pytest.raises(ck.CheckpointError, match='--trust-checkpoint'):
        loader.load_checkpoint(str(evil))  # load_from / resume / test.py through mmengine's runner
    with pytest.raises(ck.CheckpointError, match='--trust-checkpoint'):
        load_checkpoint(torch.nn.Linear(2, 2), str(evil))  # init_cfg=dict(type='Pretrained')
    assert not marker.exists()


def test_trust_checkpoint_is_explicit_and_per_file(tmp_path, loader, capfd):
    marker = tmp_path / 'ran'
    trusted = evil_checkpoint(tmp_path / 'trusted.pth', marker)
    other = evil_checkpoint(tmp_path / 'other.pth', tmp_path / 'other_ran')
    ck.install_loader(trusted)
    ck.check_checkpoint(str(trusted))
    assert loader.load_checkpoint(str(trusted))['state_dict']['w'].sum() == 2
    assert marker.exists()  # the user asked for it, and was warned
    assert 'WARNING: --trust-checkpoint' in capfd.readouterr().err
    with pytest.raises(ck.CheckpointError):
        loader.load_checkpoint(str(other))
    assert not (tmp_path / 'other_ran').exists()


def test_unreadable_file_is_not_called_unsafe(tmp_path, loader):
    bad = tmp_path / 'garbage.pth'
    bad.write_bytes(b'garbage, neither a zip nor a pickle')
    ck.install_loader()
    with pytest.raises(ck.CheckpointError, match=r"garbage\.pth' cannot be read \(UnpicklingError: Unsupported"):
        loader.load_checkpoint(str(bad))


def test_atomic_write_record_and_damage(tmp_path):
    path = tmp_path / 'iter_4.pth'
    state = {'state_dict': {'w': torch.randn(4096)}}
    buf = io.BytesIO()
    torch.save(state, buf)
    ck.write_atomic(buf.getvalue(), path)
    record = json.loads(ck.record_path(path).read_text())
    assert record['size'] == path.stat().st_size and len(record['sha256']) == 64
    assert ck.damage(path) is None
    assert not list(tmp_path.glob('.*tmp*'))  # the temporary file was renamed
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    assert 'SHA-256' in ck.damage(path)
    path.write_bytes(bytes(data[:len(data) // 2]))
    assert 'bytes, its integrity record says' in ck.damage(path)
    with pytest.raises(ck.CheckpointError, match=r"iter_4\.pth' is damaged"):
        ck.check_intact(path)


def test_damage_without_record_uses_the_zip_crcs(tmp_path):
    path = tmp_path / 'w.pth'
    torch.save({'w': torch.randn(4096)}, path)
    assert ck.damage(path) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    assert 'CRC-32' in ck.damage(path)
    path.write_bytes(bytes(data[:100]))
    assert 'not a complete torch zip' in ck.damage(path)
    path.write_bytes(b'')
    assert ck.damage(path) == 'empty file'


def _save(path: Path, it: int) -> None:
    buf = io.BytesIO()
    torch.save({'meta': {'iter': it}, 'state_dict': {'w': torch.full((1024,), float(it))}}, buf)
    ck.write_atomic(buf.getvalue(), path)


def test_resolve_resume_falls_back_to_the_newest_intact(tmp_path):
    for it in (2, 4, 6):
        _save(tmp_path / f'iter_{it}.pth', it)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    assert ck.resolve_resume(tmp_path) == ((tmp_path / 'iter_6.pth').resolve(), [])
    data = bytearray((tmp_path / 'iter_6.pth').read_bytes())
    data[600:700] = bytes(100)
    (tmp_path / 'iter_6.pth').write_bytes(bytes(data))
    path, notes = ck.resolve_resume(tmp_path)
    assert path.name == 'iter_4.pth'
    assert len(notes) == 1 and 'resuming from iter_4.pth (step 4)' in notes[0] and 'iter_6.pth' in notes[0]
    (tmp_path / 'last_checkpoint').write_text('')  # empty: a note, the newest intact file still wins
    path, notes = ck.resolve_resume(tmp_path)
    assert path.name == 'iter_4.pth' and 'is empty' in notes[0]
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_8.pth'))  # names a file that is gone
    path, notes = ck.resolve_resume(tmp_path)
    assert path.name == 'iter_4.pth' and 'does not exist' in notes[0]


def test_resolve_resume_looks_in_the_folder_last_checkpoint_names(tmp_path):
    out = tmp_path / 'elsewhere'
    for it in (2, 4):
        _save(out / f'iter_{it}.pth', it)
    (tmp_path / 'last_checkpoint').write_text(str(out / 'iter_4.pth'))
    (out / 'iter_4.pth').write_bytes(b'')
    path, notes = ck.resolve_resume(tmp_path)
    assert path == (out / 'iter_2.pth').resolve() and str(out / 'iter_4.pth') in notes[0]
    with pytest.raises(ck.CheckpointError, match=r"nope\.pth' cannot be read"):
        ck.check_checkpoint(str(tmp_path / 'nope.pth'))


def test_resolve_resume_errors_in_one_line(tmp_path):
    assert ck.resolve_resume(tmp_path) == (None, [])  # a fresh work dir: nothing to resume
    (tmp_path / 'last_checkpoint').write_text('')
    with pytest.raises(ck.CheckpointError, match='has a last_checkpoint file but no checkpoint') as e:
        ck.resolve_resume(tmp_path)
    assert '\n' not in str(e.value)
    (tmp_path / 'iter_2.pth').write_bytes(b'PK\x03\x04 broken')
    with pytest.raises(ck.CheckpointError, match=r'no intact checkpoint in .*iter_2\.pth: not a complete torch zip'):
        ck.resolve_resume(tmp_path)


def test_training_state_becomes_plain_and_comes_back(tmp_path):
    hooks = load_tool('_checkpoint_hooks')
    from mmengine.logging import HistoryBuffer
    hub = {'log_scalars': OrderedDict(loss=HistoryBuffer([1.5, 0.5], [1, 1], 10)),
           'runtime_info': OrderedDict(iter=np.int64(3), best=np.float32(0.25), ids=np.arange(3), names=['a']),
           'resumed_keys': OrderedDict(loss=True)}
    ckpt = {'meta': {'epoch': 0, 'seed': np.int64(7)}, 'message_hub': hub, 'state_dict': {'w': torch.ones(2)}}
    hooks.PlainCheckpointStateHook().before_save_checkpoint(None, ckpt)
    torch.save(ckpt, tmp_path / 'c.pth')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / 'c.pth')) == []
    back = torch.load(tmp_path / 'c.pth', weights_only=True)
    hooks.PlainCheckpointStateHook().after_load_checkpoint(None, back)
    buf = back['message_hub']['log_scalars']['loss']
    assert isinstance(buf, HistoryBuffer) and buf.max_length == 10
    np.testing.assert_array_equal(buf.data[0], [1.5, 0.5])
    info = back['message_hub']['runtime_info']
    assert info['iter'] == 3 and info['best'] == 0.25 and info['names'] == ['a']
    np.testing.assert_array_equal(info['ids'], np.arange(3))
    assert back['meta']['seed'] == 7


def test_fit_problem_counts_and_names_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    own = model.state_dict()
    assert ck.fit_problem(model, {'state_dict': {f'module.{k}': v for k, v in own.items()}}) is None
    partial = {k: v for k, v in own.items() if k != '0.bias'}
    partial['0.weight'] = torch.zeros(5, 3)
    partial['head.fc'] = torch.zeros(1)
    del partial['1.num_batches_tracked']  # mmengine ignores it too
    msg = ck.fit_problem(model, partial)
    assert msg.startswith("1 missing, 1 unexpected, 1 mis-shaped of the model's 7 keys")
    assert 'missing: 0.bias' in msg and 'unexpected: head.fc' in msg and '0.weight [5, 3] vs model [4, 3]' in msg
    with pytest.raises(ck.CheckpointError, match=r"'x\.pth' does not fit.*--allow-partial-checkpoint"):
        ck.check_fit(model, partial, 'x.pth')
    ck.check_fit(model, partial, 'x.pth', allow_partial=True)


def test_train_config_gets_each_hook_once(demo_root, tmp_path, monkeypatch):
    """train.py swaps in SafeCheckpointHook and adds the state / data-check hooks, once, also to a config dumped by
    an earlier run; --skip-data-check drops the data check."""
    from conftest import DET_CFG
    train = load_tool('train')
    monkeypatch.chdir(demo_root)

    def build(cfg_path, *flags):
        cfg = train.build_cfg(train.parse_args([str(cfg_path), '--work-dir', str(tmp_path / 'w'), *flags]))
        return cfg, [h['type'] for h in cfg.custom_hooks]

    cfg, types = build(DET_CFG)
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    assert cfg.default_hooks.checkpoint.backend_args == {'backend': 'sparsedense_atomic_local'}
    assert types.count('PlainCheckpointStateHook') == 1 and types.count('DataCheckHook') == 1
    cfg.dump(str(tmp_path / 'dumped.py'))
    cfg, types = build(tmp_path / 'dumped.py')
    assert types.count('PlainCheckpointStateHook') == 1 and types.count('DataCheckHook') == 1
    cfg, types = build(tmp_path / 'dumped.py', '--skip-data-check')
    assert 'DataCheckHook' not in types and types.count('PlainCheckpointStateHook') == 1
