"""Which path a block takes is logged once per new call signature (``fused_block.fused_path_applies``).

Runs on the GPU when one is present, otherwise on CPU tensors under the Triton interpreter (``DEV``)."""
from __future__ import annotations

import logging

import pytest
import torch

import sparse_ops
from backbones import HWT, BiFormer, DiNAT
from backbones.layers import fused_block

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
ARCH = dict(embed_dims=16, depths=(1, 1), num_heads=(1, 2), window_size=3, mlp_ratio=2.0)


@pytest.mark.parametrize('backend, want', [('torch', 'module composition'), ('triton', 'fused node')])
def test_path_decision_is_logged_once(monkeypatch, backend, want):
    seen = []
    monkeypatch.setattr(fused_block, 'print_log', lambda msg, logger=None, level=None: seen.append((msg, level)))
    model = HWT(arch=ARCH, out_indices=(0, 1), cuda_graphs=False).to(DEV)
    x = torch.randn(1, 3, 20, 24, device=DEV)
    with sparse_ops.use_backend(backend):
        model(x)
        model(x)                                   # same signature: decided (and logged) once
    assert len(seen) == 2 and all(level == logging.DEBUG for _, level in seen)
    assert all(msg.startswith('HWTBlock (1, ') and msg.endswith(f': {want}') for msg, _ in seen), seen


def _hwt(**kw):
    return HWT(arch=ARCH, out_indices=(0, 1), **kw)


def _dinat(**kw):
    arch = dict(depths=(1, 2, 1, 1), embed_dims=16, num_heads=(1, 2, 2, 2), mlp_ratio=2.0, kernel_size=3)
    return DiNAT(arch=arch, dilations=((1,), (1, 2), (1,), (1,)), out_indices=(0, 1), **kw)


def _biformer(**kw):
    arch = dict(depths=(1, 1, 1, 1), embed_dims=(32, 32, 32, 32), head_dim=16, global_heads=2)
    return BiFormer(arch=arch, n_win=2, topks=(1, 2, 'global', 'global'), **kw)


@pytest.mark.skipif(DEV == 'cuda', reason='bitwise equality needs the interpreter (GPU kernels add atomically in '
                    'any order); on the GPU: test_graphs_schedule_gpu.py::test_with_cp_equals_plain_under_autocast')
@pytest.mark.parametrize('build, n_fused', [(_hwt, 4), (_dinat, 6), (_biformer, 8)], ids=['HWT', 'DiNAT', 'BiFormer'])
def test_with_cp_keeps_the_fused_path_under_autocast(monkeypatch, build, n_fused):
    """``with_cp`` under fp16 autocast: every block still takes the fused node (each casts its own weights inside
    the checkpoint) and the step equals the same model without checkpointing (bitwise: the same kernels)."""
    seen = []
    monkeypatch.setattr(fused_block, 'print_log', lambda msg, logger=None, level=None: seen.append(msg))
    torch.manual_seed(0)
    plain = build(drop_path_rate=0.0, cuda_graphs=False).eval()
    cp = build(drop_path_rate=0.0, with_cp=True, cuda_graphs=False).eval()      # eval: BN statistics fixed
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 20, 24)
    results = []
    for model in (plain, cp):
        with sparse_ops.use_backend('triton'):          # the recomputation in backward reads the backend too
            with torch.autocast('cpu', dtype=torch.float16):
                outs = model(x)
            sum(o.float().square().mean() for o in outs).backward()
        # a parameter no output depends on: zeros through the backbone-wide cast, None through per-block casts
        results.append(([o.detach() for o in outs],
                        [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]))
    assert len(seen) == n_fused and all(msg.endswith(': fused node') for msg in seen), seen
    for a, b in zip(results[1][0] + results[1][1], results[0][0] + results[0][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('backend, autocast, precast, want', [
    (None, False, True, 'module composition' if DEV == 'cpu' else 'fused node'),   # default: CPU twin, CUDA fused
    ('torch', True, True, 'module composition'),
    ('triton', False, True, 'fused node'),              # fp32, interpreter
    ('triton', True, True, 'fused node'),               # fp16 autocast, weights pre-cast by the backbone
    ('triton', True, False, 'module composition'),      # fp16 autocast, a block called on its own: fp32 weights
], ids=['cpu-default', 'torch', 'triton-fp32', 'triton-amp', 'triton-amp-not-precast'])
def test_path_decision_table(monkeypatch, backend, autocast, precast, want):
    """Rows of docs/design.md's "Which path runs when" that one device can run, read off the logged decision."""
    seen = []
    monkeypatch.setattr(fused_block, 'print_log', lambda msg, logger=None, level=None: seen.append(msg))
    model = HWT(arch=ARCH, out_indices=(0, 1), cuda_graphs=False).to(DEV)
    x = torch.randn(1, 3, 20, 24, device=DEV)
    with sparse_ops.use_backend(backend), torch.autocast(DEV, dtype=torch.float16, enabled=autocast):
        if precast:
            model(x)
        else:
            block, tokens = model.layers[0].blocks[0], torch.randn(1, 30, 16, device=DEV)
            block(tokens, (5, 6))
    assert seen and all(msg.endswith(f': {want}') for msg in seen), seen


def test_no_fused_node_under_compile(monkeypatch):
    """Under ``torch.compile`` (Dynamo tracing) a block never takes the fused node, whatever the backend."""
    block = HWT(arch=ARCH, out_indices=(0, 1), cuda_graphs=False).to(DEV).layers[0].blocks[0]
    tokens = torch.randn(1, 30, 16, device=DEV)
    with sparse_ops.use_backend('triton'):
        assert block._fused(tokens, (5, 6))
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
        assert not block._fused(tokens, (5, 6))
