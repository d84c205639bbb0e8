"""The example configs of docs/guide.md (code blocks opening with ``# my_...py``) are valid as printed: they read
through the tools' config reader, pass the neck-width check, build, and run backbone + neck / decode heads on a
64 x 64 image with the output strides the guide states."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch

from test_configs import REPO, zero_random_init

sys.path.insert(0, str(REPO / 'tools'))
_spec = importlib.util.spec_from_file_location('sparsedense_tools__cfg', REPO / 'tools/_cfg.py')
_cfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cfg)
import _necks  # noqa: E402

BLOCKS = re.findall(r'```python\n(# (my_[\w.-]+\.py)\n.*?)```', (REPO / 'docs/guide.md').read_text(), re.S)


def test_the_guide_has_its_examples():
    names = [name for _, name in BLOCKS]
    assert any('dino' in n for n in names) and any('deeplabv3plus' in n for n in names) and len(names) >= 4


@pytest.mark.parametrize('text, name', BLOCKS, ids=[name for _, name in BLOCKS])
def test_guide_example_builds_and_its_widths_fit(text, name, tmp_path):
    from mmengine.registry import MODELS, DefaultScope
    path = tmp_path / name
    path.write_text(text)
    cfg, scope = _cfg.read_config(str(path))
    _necks.check_neck_widths(cfg, scope)
    with DefaultScope.overwrite_default_scope(scope), zero_random_init():
        model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 64))
        strides = [64 // f.shape[-1] for f in feats]
        if scope == 'mmdet':
            outs = model.neck(feats)
            assert all(o.shape[1] == cfg.model.neck.out_channels for o in outs)
        else:
            assert model.decode_head.forward(list(feats)).shape[1] == cfg.model.decode_head.num_classes
            model.auxiliary_head.forward(list(feats))
    if 'dino' in name:
        assert strides == [8, 16, 32]
    if 'deeplabv3plus' in name:  # the stride the guide warns about: 32 at the ASPP input, not 8
        assert strides[cfg.model.decode_head.in_index] == 32
