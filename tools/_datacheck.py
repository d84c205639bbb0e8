"""The dataset check of ``tools/train.py``: bad data found before the first iteration, in one line.

``DataCheckHook`` runs at ``before_run``, after mmengine has built the train (and val) datasets from their
annotation files and before any weights are loaded or any iteration runs. It reads the sample lists mmdet / mmseg
parsed (no second parse of a COCO-size json) and checks every sample:

- the dataset lists at least one sample (an empty annotation file, or one whose images all lack annotations when
  ``filter_empty_gt`` is on);
- every listed image exists and its header decodes (``PIL.Image.open`` reads the header only, no pixel decode);
- every listed label map exists, its header decodes and its size equals its image's.

Headers are read by a thread pool (I/O bound). The first bad file and the number of bad samples are reported as one
``DataCheckError`` line; ``--skip-data-check`` turns the hook off.

mmengine cannot even build a dataset with no samples (``np.concatenate`` of an empty list while serializing it), so
that failure comes before any hook: ``diagnose(cfg)``, called by train.py only when the run failed while building
its loops (``loops_built``), re-reads the annotation lists without serializing them and names the empty one.
"""
from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


class DataCheckError(RuntimeError):
    """A dataset problem found before training; the message is one line."""



def _base_datasets(ds):
    """The datasets that hold samples, inside ConcatDataset / RepeatDataset / ClassBalancedDataset wrappers."""
    if isinstance(getattr(ds, 'datasets', None), (list, tuple)):
        for sub in ds.datasets:
            yield from _base_datasets(sub)
    elif getattr(ds, 'dataset', None) is not None:
        yield from _base_datasets(ds.dataset)
    else:
        yield ds


def _header_size(path: str) -> tuple[int, int]:
    """(width, height) from the image header; raises on a missing or undecodable file."""
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def sample_problem(info: dict) -> str | None:
    """Why one sample (mmdet / mmseg data info with ``img_path`` and maybe ``seg_map_path``) is bad, or None."""
    img, seg = info.get('img_path'), info.get('seg_map_path')
    size = None
    for kind, path in (('image', img), ('label map', seg)):
        if not path or '://' in str(path):
            continue
        if not os.path.isfile(path):
            return f"{kind} '{path}' does not exist"
        try:
            got = _header_size(path)
        except Exception as e:  # noqa: BLE001  PIL raises several types for a bad header
            return f"{kind} '{path}' cannot be decoded ({type(e).__name__}: {str(e)[:120]})"
        if kind == 'image':
            size = got
        elif size is not None and got != size:
            return f"label map '{path}' is {got[0]}x{got[1]} but its image '{img}' is {size[0]}x{size[1]} (WxH)"
    return None


def _describe(base, name: str) -> str:
    return f"{name} data ({getattr(base, 'ann_file', '') or getattr(base, 'data_root', '') or type(base).__name__})"


def _empty_error(where: str) -> DataCheckError:
    return DataCheckError(f'{where}: no samples (an empty annotation file, or no image with annotations while '
                          'filter_empty_gt is on)')


def check_dataset(ds, name: str, workers: int = 8) -> None:
    """Raise DataCheckError naming the first bad sample of ``ds`` (an mmengine BaseDataset or a wrapper of some)."""
    for base in _base_datasets(ds):
        where = _describe(base, name)
        n = len(base)
        if n == 0:
            raise _empty_error(where)
        with ThreadPoolExecutor(workers) as pool:
            problems = [p for p in pool.map(lambda i: sample_problem(base.get_data_info(i)), range(n),
                                            chunksize=64) if p]
        if problems:
            raise DataCheckError(f'{where}: {len(problems)} of {n} samples are bad; first: {problems[0]}. Fix or '
                                 'remove them (or skip this check with --skip-data-check)')


@HOOKS.register_module(force=True)
class DataCheckHook(Hook):
    """Check the train and val datasets before the run (after mmengine built them, before the first iteration)."""

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        check_dataset(runner.train_dataloader.dataset, 'train')
        val_loop = runner.val_loop
        if val_loop is not None and hasattr(val_loop, 'dataloader'):
            check_dataset(val_loop.dataloader.dataset, 'val')


def loops_built(runner) -> bool:
    """Whether the runner got past building its train / val loops (and so their datasets). Runner.train assigns
    ``_train_loop`` / ``_val_loop`` only once they are built (the public properties would try to build them)."""
    return not isinstance(runner._train_loop, dict) and not isinstance(runner._val_loop, dict)


def _lazy(ds_cfg):
    """A dataset config (and the datasets it wraps) with ``lazy_init=True``: built without reading annotations."""
    if isinstance(ds_cfg, dict):
        ds_cfg = dict(ds_cfg)
        if 'dataset' in ds_cfg:
            ds_cfg['dataset'] = _lazy(ds_cfg['dataset'])
        if isinstance(ds_cfg.get('datasets'), (list, tuple)):
            ds_cfg['datasets'] = [_lazy(d) for d in ds_cfg['datasets']]
        if 'dataset' not in ds_cfg and 'datasets' not in ds_cfg:
            ds_cfg['lazy_init'] = True
    return ds_cfg


def diagnose(cfg) -> DataCheckError | None:
    """After the runner failed to build its datasets: the first train / val dataset whose annotation list is empty
    (after mmdet's / mmseg's filtering), as a DataCheckError; None when that is not the cause."""
    from mmengine.registry import DATASETS
    for phase in ('train', 'val'):
        loader = cfg.get(f'{phase}_dataloader')
        if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
            continue
        try:
            ds = DATASETS.build(_lazy(copy.deepcopy(loader['dataset'])))
        except Exception:  # noqa: BLE001  another cause: the caller re-raises the original error
            continue
        for base in _base_datasets(ds):
            try:
                base.data_list = base.load_data_list()
                empty = len(base.filter_data()) == 0
            except Exception:  # noqa: BLE001
                continue
            if empty:
                return _empty_error(_describe(base, phase))
    return None
