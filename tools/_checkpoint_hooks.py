"""mmengine hooks and the file backend that make the tools' checkpoints safe (see ``_checkpoint`` for the file side).

- ``SafeCheckpointHook``: mmengine's ``CheckpointHook`` whose files are written atomically with an integrity record
  (``AtomicLocalBackend``), whose outdated checkpoint is deleted only after the new one is complete, and whose
  ``last_checkpoint`` is rewritten (atomically) last.
- ``PlainCheckpointStateHook``: mmengine 0.10.7 saves ``HistoryBuffer`` objects and numpy values in the message hub;
  weights-only loading refuses them. Before a save they become plain dicts of tensors / numbers (tagged), and after
  a load they are turned back, so every checkpoint of ``tools/train.py`` loads with ``weights_only=True``.
- ``CheckpointFitHook``: after the checkpoint of ``tools/test.py`` is read and before it goes into the model, refuse
  it (``CheckpointError``) when its keys or shapes do not fit the model, unless a partial load was asked for.
- ``use_safe_checkpoints(cfg)`` / ``check_checkpoint_fit(cfg, path, allow_partial)``: put them into a config.
"""
from __future__ import annotations

import io
import os.path as osp
import re
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

import _checkpoint

BACKEND = 'sparsedense_atomic_local'
_TAG = '__sparsedense_plain__'


class AtomicLocalBackend(LocalBackend):
    """Local files written by ``_checkpoint.write_atomic`` (with integrity record); ``remove`` also removes it."""

    def put(self, obj: bytes, filepath) -> None:
        _checkpoint.write_atomic(obj, filepath)
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(obj))
        if unsafe:
            print(f'warning: {filepath} holds objects that weights-only loading refuses ({", ".join(unsafe[:5])}); '
                  'loading it will need --trust-checkpoint', file=sys.stderr, flush=True)

    def remove(self, filepath) -> None:
        _checkpoint.remove_checkpoint(filepath)


register_backend(BACKEND, AtomicLocalBackend, force=True)


@HOOKS.register_module(force=True)
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that never leaves a run without a complete checkpoint (order: write the new file
    atomically, delete the outdated one, rewrite ``last_checkpoint``)."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not is_main_process():
            return
        for folder, pattern in ((self.out_dir, '.*.pth*.tmp-*'), (runner.work_dir, '.last_checkpoint.tmp-*')):
            if osp.isdir(folder):  # temporary files of a write that was killed
                for tmp in Path(folder).glob(pattern):
                    tmp.unlink(missing_ok=True)
        if self.max_keep_ckpts > 0 and self.keep_ckpt_ids and osp.isdir(self.out_dir):
            # a kill between writing a checkpoint and deleting the outdated one leaves that one behind
            prefix, _, suffix = self.filename_tmpl.partition('{}')
            name = re.compile(re.escape(prefix) + r'(\d+)' + re.escape(suffix) + '$')
            for path in Path(self.out_dir).iterdir():
                m = name.match(path.name)
                if m and int(m.group(1)) < min(self.keep_ckpt_ids):
                    self.file_backend.remove(str(path))

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        name = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, name)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, name, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        if outdated is not None and outdated != step:
            old = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(old):
                self.file_backend.remove(old)
            elif self.file_backend.isdir(old):
                self.file_backend.rmtree(old)
        _checkpoint.write_atomic(str(self.last_ckpt).encode(), osp.join(runner.work_dir, 'last_checkpoint'),
                                 record=False)


def _to_plain(obj):
    """``obj`` with HistoryBuffers and numpy values replaced by tensors / python numbers (tagged to turn back)."""
    if isinstance(obj, HistoryBuffer):
        logs, counts = obj.data
        return {_TAG: 'HistoryBuffer', 'log': torch.from_numpy(np.array(logs)), 'count':
                torch.from_numpy(np.array(counts)), 'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in 'biuf':
            return {_TAG: 'ndarray', 'data': torch.from_numpy(obj.copy())}
        return _to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, OrderedDict) else {}  # ConfigDict etc. become dicts
        for k, v in obj.items():
            out[k] = _to_plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_to_plain(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _from_plain(obj):
    """Inverse of ``_to_plain``."""
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if tag == 'HistoryBuffer':
            return HistoryBuffer(obj['log'].numpy(), obj['count'].numpy(), obj['max_length'])
        if tag == 'ndarray':
            return obj['data'].numpy()
        out = type(obj)() if type(obj) in (dict, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _from_plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_from_plain(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


@HOOKS.register_module(force=True)
class PlainCheckpointStateHook(Hook):
    """Everything in a checkpoint but the weights becomes plain (weights-only loadable) on save, and back on load."""

    priority = 'LOWEST'  # last on save, after other hooks added their state

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            if key != 'state_dict':
                checkpoint[key] = _to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            if key != 'state_dict':
                checkpoint[key] = _from_plain(checkpoint[key])


@HOOKS.register_module(force=True)
class CheckpointFitHook(Hook):
    """Refuse a checkpoint whose keys / shapes do not fit the model (``allow_partial``: warn and go on)."""

    priority = 'LOWEST'  # after hooks that rewrite the loaded state (EMA)

    def __init__(self, checkpoint: str, allow_partial: bool = False):
        self.checkpoint = checkpoint
        self.allow_partial = allow_partial

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        _checkpoint.check_fit(runner.model, checkpoint, self.checkpoint, self.allow_partial)


def use_safe_checkpoints(cfg) -> None:
    """Train with ``SafeCheckpointHook`` (local work dirs) and ``PlainCheckpointStateHook``."""
    hook = cfg.get('default_hooks', {}).get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook', CheckpointHook):
        hook['type'] = 'SafeCheckpointHook'
        out_dir = str(hook.get('out_dir') or cfg.work_dir)
        if hook.get('backend_args') is None and hook.get('file_client_args') is None and '://' not in out_dir:
            hook['backend_args'] = dict(backend=BACKEND)
    add_hook(cfg, dict(type='PlainCheckpointStateHook'))


def add_hook(cfg, hook: dict) -> None:
    """Append ``hook`` to ``cfg.custom_hooks`` unless a hook of its type is there (a config dumped by a run)."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(h, dict) and h.get('type') == hook['type'] for h in hooks):
        hooks.append(hook)
    cfg.custom_hooks = hooks


def drop_hook(cfg, type_name: str) -> None:
    """Remove the hooks of type ``type_name`` from ``cfg.custom_hooks``."""
    cfg.custom_hooks = [h for h in (cfg.get('custom_hooks') or [])
                        if not (isinstance(h, dict) and h.get('type') == type_name)]


def check_checkpoint_fit(cfg, checkpoint: str, allow_partial: bool) -> None:
    """Test with ``CheckpointFitHook`` (and ``PlainCheckpointStateHook``, which turns a training state back)."""
    add_hook(cfg, dict(type='PlainCheckpointStateHook'))
    drop_hook(cfg, 'CheckpointFitHook')
    add_hook(cfg, dict(type='CheckpointFitHook', checkpoint=str(checkpoint), allow_partial=bool(allow_partial)))
