"""What tools/train.py and tools/test.py share: task scope, config checks, the one-line error.

- ``setup_scope(cfg)``: registers mmdet's or mmseg's modules, chosen by the config's ``default_scope``.
- Checkpoints: ``_checkpoint`` (weights-only loading, atomic writes, resume fallback, fit check) and
  ``_checkpoint_hooks`` (the mmengine hooks that apply them); the dataset check before training: ``_datacheck``.
- ``fail(err)``: the one ``error:`` line (exit status 2) for a problem the tools detect while the runner runs;
  ``SPARSEDENSE_DEBUG=1`` re-raises it for the traceback.
- ``check_cfg_options(cfg, options)``: every ``--cfg-options`` key must exist in the config, or be a keyword the
  registered class of the enclosing ``type=`` dict accepts, or a top-level runner setting. mmengine would silently
  add a misspelt key; we name it instead. ``apply_cfg_options`` merges them; ``data_root=DIR`` moves every path
  under the config's data_root (other plain top-level variables were substituted when the file was read: refused).
- ``check_data_paths(cfg, phases)``: data roots, annotation files and image folders the run will read must exist;
  the error names the config key and the path before the runner starts (and before minutes of model building).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import os.path as osp
import sys
from typing import Any, Iterable

import torch

SUPPORTED_SCOPES = ('mmdet', 'mmseg')

# top-level keys Runner.from_cfg (mmengine 0.10.7) reads besides those usually present in configs
RUNNER_KEYS = {
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg', 'val_cfg',
    'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator', 'test_evaluator',
    'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from', 'resume', 'launcher', 'env_cfg',
    'log_processor', 'log_level', 'visualizer', 'default_scope', 'randomness', 'experiment_name', 'cfg',
    'sync_bn', 'model_wrapper_cfg', 'compile', 'find_unused_parameters', 'custom_imports', 'runner_type',
    'tta_model', 'tta_pipeline'
}


class ConfigCheckError(ValueError):
    """A config or command-line problem found before the runner starts."""


# ------------------------------------------------------------------------------------------------- scope
def setup_scope(cfg) -> str:
    """Register every module of the library named by ``cfg.default_scope`` and return the scope name."""
    scope = cfg.get('default_scope', None)
    if scope not in SUPPORTED_SCOPES:
        raise ConfigCheckError(f"default_scope: expected one of {SUPPORTED_SCOPES}, got {scope!r} "
                               '(inherit a stock mmdet:: or mmseg:: config)')
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    return scope


# ------------------------------------------------------------------------------------------------- cfg options
def _registries(scope: str) -> list:
    from mmengine.registry import Registry
    mod = importlib.import_module(f'{scope}.registry')
    return [v for v in vars(mod).values() if isinstance(v, Registry)]


def _accepted_kwargs(type_name: Any, scope: str) -> set[str] | None:
    """Keyword names the registered class/function accepts; None when unknown or it takes **kwargs."""
    if not isinstance(type_name, str):
        obj = type_name
    else:
        obj = None
        for reg in _registries(scope):
            try:
                obj = reg.get(type_name)
            except Exception:
                obj = None
            if obj is not None:
                break
        if obj is None:
            return None
    names: set[str] = set()
    targets = [c for c in inspect.getmro(obj) if c is not object] if inspect.isclass(obj) else [obj]
    for t in targets:
        try:
            sig = inspect.signature(t.__init__ if inspect.isclass(t) else t)
        except (TypeError, ValueError):
            return None
        params = list(sig.parameters.values())
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names  # the chain of **kwargs ends here
    return None


def check_cfg_options(cfg, options: dict | None, scope: str) -> None:
    """Raise ConfigCheckError naming the first ``--cfg-options`` key that is not in ``cfg``."""
    for full_key in (options or {}):
        parts = full_key.split('.')
        node: Any = cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg
        for depth, part in enumerate(parts):
            here = '.'.join(parts[:depth + 1])
            if isinstance(node, (list, tuple)):
                if part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                    continue
                raise ConfigCheckError(f'--cfg-options {full_key}: {".".join(parts[:depth]) or "<root>"} is a list of '
                                       f'{len(node)} items, {part!r} is not an index into it')
            if node is None:
                break  # an unset value (e.g. init_cfg=None) may be filled in key by key
            if not isinstance(node, dict):
                raise ConfigCheckError(f'--cfg-options {full_key}: {".".join(parts[:depth])} is a '
                                       f'{type(node).__name__}, not a dict, so it has no key {part!r}')
            if part in node or part.startswith('_'):
                if (depth == 0 and len(parts) == 1 and part not in RUNNER_KEYS and part != 'data_root'
                        and not isinstance(node[part], (dict, list, tuple))):
                    raise ConfigCheckError(
                        f'--cfg-options {full_key}: {part!r} is a variable of the config file, already substituted '
                        'where the file used it when the config was read; changing it here has no effect. Set the '
                        'keys that use it instead (e.g. train_cfg.max_iters, model.roi_head.bbox_head.num_classes)')
                node = node.get(part)
                continue
            if depth == 0 and part in RUNNER_KEYS:
                break
            if 'type' in node:  # a new keyword of a registered class (possibly a dict filled in key by key)
                accepted = _accepted_kwargs(node['type'], scope)
                if accepted is None or part in accepted:
                    break
                candidates = sorted(accepted | set(node))
            else:
                candidates = list(node)
            hint = difflib.get_close_matches(part, [str(c) for c in candidates], n=3)
            hint_s = f'; did you mean {", ".join(hint)}?' if hint else ''
            where = '.'.join(parts[:depth]) or 'the config root'
            raise ConfigCheckError(f'--cfg-options {full_key}: key {here!r} does not exist in the config '
                                   f'({where} has no {part!r}){hint_s}')


def apply_cfg_options(cfg, options: dict | None) -> None:
    """``cfg.merge_from_dict(options)``, except that ``data_root=NEW`` rewrites every path that starts with the
    config's ``data_root`` (dataset roots, evaluator annotation files), which is what changing the variable in the
    file would have done."""
    options = dict(options or {})
    if 'data_root' in options:
        new_root = str(options.pop('data_root'))
        old_root = cfg.get('data_root')
        if not isinstance(old_root, str) or not old_root:
            raise ConfigCheckError('--cfg-options data_root: the config defines no data_root to replace')
        old, new = old_root.rstrip('/'), new_root.rstrip('/')

        def rewrite(node):
            if isinstance(node, dict):
                for k in list(node):
                    node[k] = rewrite(node[k])
            elif isinstance(node, list):
                node[:] = [rewrite(v) for v in node]
            elif isinstance(node, tuple):
                return tuple(rewrite(v) for v in node)
            elif isinstance(node, str) and (node.rstrip('/') == old or node.startswith(old + '/')):
                return new + node[len(old):]
            return node

        rewrite(cfg._cfg_dict)
    if options:
        cfg.merge_from_dict(options)


# ------------------------------------------------------------------------------------------------- data paths
def _is_remote(path: str) -> bool:
    return '://' in str(path)


def _walk_datasets(ds: Any, key: str) -> Iterable[tuple[str, dict]]:
    """(config key, dataset dict) for a dataset config and the datasets wrapped inside it."""
    if not isinstance(ds, dict):
        return
    yield key, ds
    if isinstance(ds.get('dataset'), dict):
        yield from _walk_datasets(ds['dataset'], f'{key}.dataset')
    if isinstance(ds.get('datasets'), (list, tuple)):
        for i, sub in enumerate(ds['datasets']):
            yield from _walk_datasets(sub, f'{key}.datasets.{i}')


def _check_dataset(key: str, ds: dict) -> None:
    root = ds.get('data_root') or ''
    if root and not _is_remote(root) and not osp.isdir(root):
        raise ConfigCheckError(f"{key}.data_root: directory '{root}' does not exist (cwd {os.getcwd()}); "
                               'point data_root at the dataset (`make data` writes the embedded demo set to data/demo)')
    ann = ds.get('ann_file') or ''
    if ann:
        path = ann if osp.isabs(ann) or not root else osp.join(root, ann)
        if not _is_remote(path) and not osp.isfile(path):
            raise ConfigCheckError(f"{key}.ann_file: annotation file '{path}' does not exist")
    prefix = ds.get('data_prefix') or {}
    if isinstance(prefix, dict):
        for name, sub in prefix.items():
            if not sub or not isinstance(sub, str):
                continue
            path = sub if osp.isabs(sub) or not root else osp.join(root, sub)
            if not _is_remote(path) and not osp.isdir(path):
                raise ConfigCheckError(f"{key}.data_prefix.{name}: folder '{path}' does not exist")


def _check_evaluator(key: str, ev: Any) -> None:
    evs = ev if isinstance(ev, (list, tuple)) else [ev]
    for i, e in enumerate(evs):
        if not isinstance(e, dict):
            continue
        k = key if len(evs) == 1 else f'{key}.{i}'
        ann = e.get('ann_file')
        if ann and not e.get('format_only', False) and not _is_remote(ann) and not osp.isfile(ann):
            raise ConfigCheckError(f"{k}.ann_file: annotation file '{ann}' does not exist")


def check_data_paths(cfg, phases: Iterable[str]) -> None:
    """Check the dataloaders/evaluators of ``phases`` ('train', 'val', 'test') that the runner will build."""
    for phase in phases:
        loader = cfg.get(f'{phase}_dataloader')
        if phase != 'train' and (loader is None or cfg.get(f'{phase}_cfg') is None
                                 or cfg.get(f'{phase}_evaluator') is None):
            continue  # the runner skips this loop, so it reads nothing
        if not isinstance(loader, dict):
            continue
        for key, ds in _walk_datasets(loader.get('dataset'), f'{phase}_dataloader.dataset'):
            _check_dataset(key, ds)
        if phase != 'train':
            _check_evaluator(f'{phase}_evaluator', cfg.get(f'{phase}_evaluator'))


# ------------------------------------------------------------------------------------------------- runner
def load_config(args):
    """Read ``args.config`` and apply the options both tools share; returns ``(cfg, scope)``.

    Checks the file exists, selects the mmdet / mmseg scope, validates then applies ``--cfg-options``, sets the
    launcher, and defaults ``work_dir`` to ``./work_dirs/<config name>`` (``--work-dir`` wins).
    """
    import _cfg
    cfg, scope = _cfg.read_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = os.path.join('./work_dirs', os.path.splitext(os.path.basename(args.config))[0])
    return cfg, scope


def build_runner(cfg):
    """Runner.from_cfg (or the config's runner_type); a config mistake the model's constructor reports (unknown
    arch, bad channel count, unexpected keyword) or neck widths that do not fit the backbone (``_necks``) become
    one ``error:`` line instead of a traceback."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    import _necks
    _necks.check_neck_widths(cfg, cfg.get('default_scope'))  # one line instead of a conv shape error later
    try:
        return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    except (KeyError, ValueError, TypeError) as e:
        if os.environ.get('SPARSEDENSE_DEBUG'):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        import _cfg
        hidden = _cfg.hidden_packages() if 'registry' in str(msg) else []
        hint = f"; note: {', '.join(hidden)} hidden by sparsedense's package of that name" if hidden else ''
        raise ConfigCheckError(f'building the runner failed: {type(e).__name__}: {msg}{hint} '
                               '(set SPARSEDENSE_DEBUG=1 for the traceback)') from e


def fail(err: BaseException) -> int:
    """Print ``err`` as one ``error:`` line and return the exit status 2; re-raise it when SPARSEDENSE_DEBUG=1."""
    if os.environ.get('SPARSEDENSE_DEBUG'):
        raise err
    print(f'error: {err}', file=sys.stderr, flush=True)
    return 2


def end_distributed() -> None:
    """Tear down the process group a distributed launch created (silences NCCL's "destroy_process_group() was not
    called" warning and frees its resources); nothing when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
