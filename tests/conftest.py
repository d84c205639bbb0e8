"""Suite-wide test setup: Triton interpreter on CPU, strict numerics, the ``gpu`` marker.

``TRITON_INTERPRET=1`` must be set before any Triton kernel module is imported, so it is set here, at the top
of the root conftest, when no CUDA device is available (only torch is imported before).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA device (skipped on CPU)')
    config.addinivalue_line('markers', 'slow: long CPU tests')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def strict_numerics():
    """Seed every RNG and turn TF32 off for the test; restore the previous TF32 flags afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def restore_default_scope():
    """Put mmengine's default-scope instances back as they were before the test: a test that builds an mmdet
    model makes 'mmdet' the current scope, and mmseg's registry then looks types up in mmdet's."""
    from mmengine.registry import DefaultScope
    saved = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
