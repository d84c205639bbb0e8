"""Shared fixtures for the tools tests: a tiny embedded dataset and a way to run the tools."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools'
DET_CFG = REPO / 'configs/demo/mask-rcnn_hwt-demo_fpn_shapes-coco.py'
SEG_CFG = REPO / 'configs/demo/upernet_hwt-demo_shapes-ade-128x128.py'
# smallest settings that still exercise the whole model: 64 px, a few images, a tiny HWT
TINY_ARCH = 'model.backbone.arch.depths=[1,1,1,1]'


def load_tool(name: str):
    """Import tools/<name>.py under a private module name (tools/ is not a package; `test` is a stdlib name)."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location(f'sparsedense_tools_{name}', TOOLS / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is created
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory) -> Path:
    """A folder holding data/demo/{coco,ade} (64 px, 12 train + 4 val images): run the tools with cwd set here so
    the configs' relative data_root resolves to it."""
    mdd = load_tool('make_demo_data')
    root = tmp_path_factory.mktemp('demo_root')
    mdd.make_demo_data(root / 'data' / 'demo', mdd.Params(size=64, num_train=12, num_val=4))
    return root


def tool_env(**extra: str) -> dict:
    """Environment for a tool subprocess: unbuffered output, one OpenMP thread unless the caller chose (tiny
    tensors: one thread was 2x faster than two on the shared 2-core machines)."""
    return dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'), **extra)


def run_tool(tool: str, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """Run tools/<tool>.py in a subprocess; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run([sys.executable, str(TOOLS / f'{tool}.py'), *map(str, args)], cwd=cwd,
                          env=tool_env(**(env or {})), capture_output=True, text=True, timeout=timeout)


# a tiny segmentation run: 4 iterations of 2 images, checkpoints at 2 and 4 (both kept), no validation
SEG_TINY = [TINY_ARCH, 'train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
            'default_hooks.checkpoint.interval=2', 'train_cfg.val_interval=100']


@pytest.fixture(scope='session')
def seg_work(demo_root, tmp_path_factory) -> Path:
    """Work dir of ``tools/train.py`` on the seg demo config after 4 iterations (iter_2.pth, iter_4.pth kept);
    copy it before changing it."""
    work = tmp_path_factory.mktemp('seg_work') / 'w'
    r = run_tool('train', SEG_CFG, '--work-dir', work, '--cfg-options', *SEG_TINY, 'train_cfg.max_iters=4',
                 'default_hooks.checkpoint.max_keep_ckpts=2', cwd=demo_root)
    assert r.returncode == 0, r.stderr[-3000:]
    return work
