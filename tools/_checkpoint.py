"""Checkpoint files the tools can trust: weights-only loading, atomic writes with an integrity record, resume
fallback, and a fit check against the model.

- ``load_from_local(filename, map_location)``: the loader the tools register as mmengine's local-file scheme
  (``install_loader``). It checks the file's integrity record when there is one, then reads it with
  ``torch.load(weights_only=True)``: no file can run code. A file that needs arbitrary globals gives one
  ``CheckpointError`` line naming it and the way out (``--trust-checkpoint``, off by default, only for the files the
  user named, with a loud warning each time).
- ``write_atomic(data, path)``: temporary file in the same folder, flush + fsync, integrity record
  ``<path>.sha256.json`` (size and SHA-256 of the bytes), rename over ``path``, fsync of the folder. A kill at any
  moment leaves either the old file or the complete new one.
- ``damage(path)``: why a checkpoint is not intact (size / hash against its record; without a record, the CRC-32 of
  every member of torch's zip container), or None.
- ``resolve_resume(work_dir)``: the newest intact ``iter_N.pth`` / ``epoch_N.pth`` for ``--resume`` (``last_checkpoint``
  is a hint, not trusted), with a note for every damaged one skipped.
- ``fit_problem(model, checkpoint)``: one line counting missing / unexpected / mis-shaped keys, or None;
  ``check_fit`` refuses (or, with ``--allow-partial-checkpoint``, warns); ``load_into(model, path)`` reads a file
  through the installed loader, checks the fit and loads the weights (demo.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import torch

RECORD_SUFFIX = '.sha256.json'
_CKPT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')
_TRUSTED: set[Path] = set()  # files / folders named with --trust-checkpoint
_VERIFIED: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) already checked in this process


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used safely; the message is one line naming the file and the way out."""


# ------------------------------------------------------------------------------------------------- writing
def record_path(path: str | os.PathLike) -> Path:
    """The integrity record of ``path``: ``<path>.sha256.json``."""
    return Path(str(path) + RECORD_SUFFIX)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(data: bytes, path: Path) -> Path:
    """``data`` in a new temporary file next to ``path``, flushed and fsynced; returns its path."""
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_atomic(data: bytes, path: str | os.PathLike, record: bool = True) -> None:
    """Replace ``path`` by ``data`` atomically; with ``record`` first write its integrity record (size, SHA-256).

    Order: temporary file (fsync) -> record (itself atomic) -> rename -> fsync of the folder. Killed before the
    rename, ``path`` keeps its old content (whose record may then no longer match: it counts as damaged, which is
    the safe side); killed after it, ``path`` is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_tmp(data, path)
    if record:
        info = {'file': path.name, 'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
        write_atomic(json.dumps(info).encode(), record_path(path), record=False)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint and its integrity record (missing files are fine)."""
    for p in (Path(path), record_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------------------------- integrity
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            h.update(block)
    return h.hexdigest()


def damage(path: str | os.PathLike) -> str | None:
    """Why the checkpoint at ``path`` is damaged, or None when it is intact (or a legacy non-zip file that carries
    nothing to check)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return f'cannot be read ({e.strerror})'
    rec = record_path(path)
    if rec.is_file():
        try:
            info = json.loads(rec.read_text())
            want_size, want_hash = int(info['size']), str(info['sha256'])
        except (OSError, ValueError, KeyError, TypeError):
            return f'its integrity record {rec.name} is unreadable'
        if size != want_size:
            return f'{size} bytes, its integrity record says {want_size}'
        if _sha256(path) != want_hash:
            return 'its SHA-256 does not match its integrity record'
        return None
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':
        return 'empty file' if size == 0 else None  # torch's legacy format carries no checksum
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f'not a complete torch zip file ({e})'
    return f'CRC-32 mismatch in member {bad}' if bad else None


def check_intact(path: str | os.PathLike) -> None:
    """Raise CheckpointError when ``path`` is damaged; each unchanged file is checked once per process."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError as e:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({e.strerror})") from e
    if _VERIFIED.get(path) == (st.st_size, st.st_mtime_ns):
        return
    why = damage(path)
    if why:
        raise CheckpointError(f"checkpoint '{path}' is damaged: {why}")
    _VERIFIED[path] = (st.st_size, st.st_mtime_ns)


# ------------------------------------------------------------------------------------------------- loading
def _is_trusted(path: Path) -> bool:
    return any(path == t or t in path.parents for t in _TRUSTED)


def _refusal(filename: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint '{filename}' cannot be read weights-only ({why}); it holds Python objects "
                           'that could run code when unpickled. If you trust where it came from, re-run with '
                           '--trust-checkpoint')


def check_checkpoint(filename: str) -> None:
    """Before any model is built: the file is intact and (unless trusted) holds nothing weights-only loading
    refuses (a scan of its pickle opcodes, nothing is executed). ``load_from_local`` enforces the same when reading."""
    check_intact(filename)
    if _is_trusted(Path(filename).resolve()):
        return
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # noqa: BLE001  legacy (non-zip) format: torch.load(weights_only=True) decides
        return
    if unsafe:
        raise _refusal(filename, 'it needs ' + ', '.join(unsafe[:3]) + (', ...' if len(unsafe) > 3 else ''))


def load_from_local(filename: str, map_location=None):
    """mmengine's local-file scheme: integrity check, then ``torch.load(weights_only=True)``."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise CheckpointError(f"checkpoint '{filename}' does not exist")
    check_intact(filename)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  torch names the global it refused
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        detail = [ln for ln in lines[1:] if not ln.startswith(('Please file', 'Check the documentation'))] or lines
        if not any('GLOBAL' in ln for ln in lines):  # not a refusal: the file itself cannot be read
            raise CheckpointError(f"checkpoint '{filename}' cannot be read ({type(e).__name__}: "
                                  f'{detail[0][:300]})') from e
        if not _is_trusted(Path(filename).resolve()):
            raise _refusal(filename, next(ln for ln in lines if 'GLOBAL' in ln)[:300]) from e
    print(f"WARNING: --trust-checkpoint: unpickling '{filename}' with full pickle; a malicious file runs code now",
          file=sys.stderr, flush=True)
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint '{filename}' cannot be read ({type(e).__name__}: {str(e)[:300]})") from e


def install_loader(*trusted: str | os.PathLike | None) -> None:
    """Register ``load_from_local`` as mmengine's local-file loader; ``trusted`` (from ``--trust-checkpoint``) are the
    files / folders that may fall back to full unpickling."""
    from mmengine.runner.checkpoint import CheckpointLoader
    for p in trusted:
        if p:
            _TRUSTED.add(Path(p).expanduser().resolve())
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


# ------------------------------------------------------------------------------------------------- resume
def _step(path: Path) -> int:
    m = _CKPT_NAME.match(path.name)
    return int(m.group(2)) if m else -1


def resolve_resume(work_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint to resume from, and notes (one line each) about what was skipped.

    Candidates: ``iter_N.pth`` / ``epoch_N.pth`` in ``work_dir`` and in the folder of the file ``last_checkpoint``
    names, newest step first. Returns ``(None, notes)`` when there is nothing to resume; raises CheckpointError when
    checkpoints exist but none is intact.
    """
    work = Path(work_dir)
    notes: list[str] = []
    cands = {p.resolve() for p in work.glob('*.pth') if _CKPT_NAME.match(p.name)}
    last = work / 'last_checkpoint'
    if last.is_file():
        try:
            named = last.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = ''
        if not named:
            notes.append(f'{last} is empty or unreadable; looking for checkpoints in {work}')
        elif not Path(named).is_file():
            notes.append(f"{last} names '{named[:200]}', which does not exist; looking for checkpoints in {work}")
        else:  # the hook's out_dir may differ from the work dir: look there too
            cands.add(Path(named).resolve())
            cands |= {p.resolve() for p in Path(named).parent.glob('*.pth') if _CKPT_NAME.match(p.name)}
    damaged = []
    here = work.resolve()

    def name(p: Path) -> str:  # short inside the work dir
        return p.name if p.parent == here else str(p)

    for path in sorted(cands, key=lambda p: (_step(p), p.parent == here, p.stat().st_mtime), reverse=True):
        why = damage(path)
        if why is None:
            if damaged:
                notes.append(f'resuming from {name(path)} (step {_step(path)}) because newer checkpoints are '
                             'damaged: ' + '; '.join(damaged))
            return path, notes
        damaged.append(f'{name(path)}: {why}')
    if damaged:
        raise CheckpointError(f'--resume: no intact checkpoint in {work}: ' + '; '.join(damaged))
    if last.is_file():
        raise CheckpointError(f'--resume: {work} has a last_checkpoint file but no checkpoint to resume from; '
                              'run without --resume to start over')
    return None, notes


# ------------------------------------------------------------------------------------------------- fit check
def _few(names: list[str], n: int = 3) -> str:
    return ', '.join(names[:n]) + (f', ... (+{len(names) - n})' if len(names) > n else '')


def fit_problem(model: torch.nn.Module, checkpoint) -> str | None:
    """Compare the checkpoint's state dict (``'module.'`` prefixes stripped, as mmengine does) with the model's:
    one line with the counts and a few names of missing / unexpected / mis-shaped keys, or None when it fits.
    A missing ``num_batches_tracked`` does not count (mmengine ignores it too); DDP / TTA wrappers are unwrapped
    as mmengine does when it loads."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        return f'it holds a {type(checkpoint).__name__}, not a state dict'
    state = {re.sub(r'^module\.', '', str(k)): v for k, v in state.items()}
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):  # what mmengine's load_state_dict loads into
        model = model.module
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    shaped = [f'{k} {list(getattr(state[k], "shape", []))} vs model {list(own[k].shape)}' for k in own
              if k in state and tuple(getattr(state[k], 'shape', ())) != tuple(own[k].shape)]
    if not (missing or unexpected or shaped):
        return None
    parts = [f'{len(missing)} missing, {len(unexpected)} unexpected, {len(shaped)} mis-shaped of the model\'s '
             f'{len(own)} keys']
    for name, keys in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', shaped)):
        if keys:
            parts.append(f'{name}: {_few(keys)}')
    return '; '.join(parts)


def check_fit(model: torch.nn.Module, checkpoint, filename: str, allow_partial: bool = False) -> None:
    """Raise CheckpointError when ``checkpoint`` does not fit ``model`` (``allow_partial``: one warning line)."""
    problem = fit_problem(model, checkpoint)
    if problem is None:
        return
    if not allow_partial:
        raise CheckpointError(f"checkpoint '{filename}' does not fit the model of this config: {problem}. Was it "
                              'written for another config? --allow-partial-checkpoint loads the matching keys anyway')
    print(f"warning: --allow-partial-checkpoint: '{filename}' fits the model only partly: {problem}",
          file=sys.stderr, flush=True)


def load_into(model: torch.nn.Module, filename: str, allow_partial: bool = False) -> dict:
    """Read ``filename`` with mmengine's loader (``install_loader`` first), check the fit, load the weights into
    ``model``; returns the checkpoint's ``meta`` dict ({} when it has none)."""
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
    checkpoint = _load_checkpoint(filename, map_location='cpu')
    check_fit(model, checkpoint, filename, allow_partial)
    _load_checkpoint_to_model(model, checkpoint)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}
