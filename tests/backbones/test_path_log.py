"""Which path a block takes is logged once per new call signature (``fused_block.fused_path_applies``)."""
from __future__ import annotations

import logging

import pytest
import torch

import sparse_ops
from backbones import HWT
from backbones.layers import fused_block
from backbones.layers.block_graphs import GraphPool

ARCH = dict(embed_dims=16, depths=(1, 1), num_heads=(1, 2), window_size=3, mlp_ratio=2.0)


@pytest.mark.parametrize('backend, graphs, want', [
    ('torch', False, 'module composition'),
    ('triton', False, 'fused node'),
    ('triton', True, 'fused node, CUDA graphs once the signature repeats'),
])
def test_path_decision_is_logged_once(monkeypatch, backend, graphs, want):
    seen = []
    monkeypatch.setattr(fused_block, 'print_log', lambda msg, logger=None, level=None: seen.append((msg, level)))
    model = HWT(arch=ARCH, out_indices=(0, 1), cuda_graphs=False)
    if graphs:
        model._attach_graphs(GraphPool(emulate=True))
    x = torch.randn(1, 3, 20, 24)
    with sparse_ops.use_backend(backend):
        model(x)
        model(x)                                   # same signature: decided (and logged) once
    assert len(seen) == 2 and all(level == logging.DEBUG for _, level in seen)
    assert all(msg.startswith('HWTBlock (1, ') and msg.endswith(f': {want}') for msg, _ in seen), seen
