"""The fused HWT block (``layers/hwt_fused.py``) against the module composition it replaces.

Small shapes on ``DEV`` (CPU: the Triton kernels under ``TRITON_INTERPRET=1``, set by the root conftest, forced
with ``sparse_ops.use_backend('triton')``; the GPU box: compiled, where fp32 ``tl.dot`` runs in tf32): fp32 and
fp16 against the twin composition. GPU only: bf16 at an HWT-T stage-1 shape against the fp32 twin, within twice
the bf16 twin's own error.
"""
from __future__ import annotations

import copy

import pytest
import torch

import sparse_ops
from backbones import HWT
from backbones.hwt import HWTBlock
from backbones.layers.linear import cast_linear_weights
from _checks import assert_equals_twin, assert_within_twin_error, rel_err, run_block

FUSED = 'FusedWindowBlockBackward'
DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
# tf32 attention dots on the GPU (the position-bias gradient, a sum of dS over every window, measured 2.9e-3 on the
# H200), exact in the interpreter
FP32_TOL = 5e-3 if DEV == 'cuda' else 1e-5


def _block(dim=32, heads=2, window=3, shift=True, drop_path=0.0, train=True, seed=0):
    torch.manual_seed(seed)
    blk = HWTBlock(dim, heads, window, shift=shift, mlp_ratio=2.0, drop_path=drop_path)
    for p in blk.parameters():           # away from the init's zeros / ones, so every term matters
        torch.nn.init.normal_(p, std=0.2)
    return blk.train(train).to(DEV)


def _run(block, x, hw, backend, dtype=None, device_type=DEV):
    """Output, input gradient, parameter gradients and output node of ``sum(out * g)`` (``_checks.run_block``)."""
    out, dx, grads, node_of = run_block(block, x, backend, dtype, device_type, hw)
    return out, dx, grads, type(node_of.grad_fn).__name__


@pytest.mark.parametrize('shift, drop_path, train, hw', [(False, 0.0, True, (5, 7)), (True, 0.3, True, (5, 7)),
                                                         (True, 0.3, False, (6, 6)), (True, 0.0, True, (2, 3))])
def test_fused_block_equals_composition_fp32(shift, drop_path, train, hw):
    """fp32: the fused node (interpreted kernels) equals the twin composition: output, dx and every parameter
    gradient (shifted chunks, ragged last chunk, stochastic depth, a small map: 2x3 <= window 3, so no shift and
    chunks of 2*2 tokens) to fp32 rounding."""
    blk = _block(shift=shift, drop_path=drop_path, train=train)
    x = torch.randn(2, hw[0] * hw[1], 32, device=DEV)
    out, dx, grads, node = _run(blk, x, hw, 'triton')
    ref_out, ref_dx, ref_grads, ref_node = _run(copy.deepcopy(blk), x, hw, 'torch')
    assert FUSED in node and FUSED not in ref_node, (node, ref_node)
    assert_equals_twin((out, dx, grads), (ref_out, ref_dx, ref_grads), dict(blk.named_parameters()), FP32_TOL)


def test_fused_block_fp16_within_twin_error():
    """fp16 autocast with the pre-cast weights: against an fp64 reference, every output / gradient error of the
    fused node is at most twice the fp16 twin composition's (+ a floor of 2e-4, fp16's half ulp is 2.4e-4)."""
    blk = _block(drop_path=0.3)
    hw = (5, 7)
    x = torch.randn(2, 35, 32, device=DEV)
    out, dx, grads, node = _run(blk, x, hw, 'triton', torch.float16)
    assert FUSED in node
    twin = _run(copy.deepcopy(blk), x, hw, 'torch', torch.float16)
    ref = _run(copy.deepcopy(blk).double(), x.double(), hw, 'torch')
    assert_within_twin_error((out, dx, grads), twin, ref, floor=2e-4)


def test_fused_block_frozen_weights_and_no_grad():
    """Frozen parameters: only x gets a gradient, equal to the composition's. Without autograd the fused forward
    gives the recorded one's output."""
    blk = _block()
    hw = (5, 7)
    x = torch.randn(2, 35, 32, device=DEV)
    frozen = copy.deepcopy(blk).requires_grad_(False)
    out_f, dx_f, grads_f, node = _run(frozen, x, hw, 'triton')
    assert FUSED in node and grads_f == {}
    _, ref_dx, _, _ = _run(copy.deepcopy(frozen), x, hw, 'torch')
    assert rel_err(dx_f, ref_dx) < FP32_TOL
    with torch.no_grad(), sparse_ops.use_backend('triton'):
        out_ng = frozen(x, hw)
    assert torch.equal(out_ng, out_f)


def test_fused_path_only_where_it_applies():
    """Fused: the Triton path with weights in the matmul dtype. Not: the twin backend, CPU without a forced
    backend, autocast without the pre-cast weights (``with_cp`` turns the cast off)."""
    hw = (4, 4)
    x = torch.randn(1, 16, 32, device=DEV)

    def node(backend, dtype=None, cast=True):
        blk = _block()
        with sparse_ops.use_backend(backend), \
                torch.autocast(DEV, dtype=dtype or torch.float32, enabled=dtype is not None), \
                cast_linear_weights(blk, enabled=cast):
            return type(blk(x.clone().requires_grad_(True), hw).grad_fn).__name__

    assert FUSED in node('triton')
    assert FUSED in node('triton', torch.float16)
    assert FUSED not in node('triton', torch.float16, cast=False)
    assert FUSED not in node('torch')
    assert (FUSED in node(None)) == (DEV == 'cuda')     # CPU without a forced backend: the twin


def _hwt_step(model, x, dtype, seed, backend):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)                           # same stochastic-depth masks on both models
    with sparse_ops.use_backend(backend), \
            torch.autocast(DEV, dtype=dtype or torch.float32, enabled=dtype is not None):
        outs = model(x)
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view(o.shape)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach().float() for o in outs], x.grad, grads


def test_hwt_fused_backbone_equals_twin_fp32():
    """A small HWT whose every block takes the fused node (interpreted on CPU) against the same weights on the twin
    path: outputs, input gradient and all parameter gradients, stochastic depth on."""
    arch = dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2), window_size=3, mlp_ratio=2.0)
    model = HWT(arch=arch, out_indices=(0, 1), drop_path_rate=0.3, cuda_graphs=False).to(DEV)
    model.init_weights()
    x = torch.randn(2, 3, 29, 37, device=DEV)
    got = _hwt_step(model, x, None, 0, 'triton')
    want = _hwt_step(copy.deepcopy(model), x, None, 0, 'torch')
    for a, b in zip(got[0], want[0]):
        assert rel_err(a, b) < FP32_TOL
    assert rel_err(got[1], want[1]) < FP32_TOL
    assert got[2].keys() == want[2].keys() == {n for n, _ in model.named_parameters()}
    for name in want[2]:
        assert rel_err(got[2][name], want[2][name]) < FP32_TOL, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_fused_block_bf16_at_hwt_t_stage1_gpu():
    """H200: bf16 fused block at HWT-T's stage-1 shape (128 x 128 tokens of a 512² input, C 96, 3 heads) against
    the fp32 twin, within twice the bf16 twin's error (+1e-3) for output, dx and every parameter gradient."""
    blk = _block(96, 3, 7, shift=True, drop_path=0.1)
    hw = (128, 128)
    x = torch.randn(2, hw[0] * hw[1], 96, device='cuda')
    out, dx, grads, node = _run(blk, x, hw, None, torch.bfloat16)
    assert FUSED in node
    twin = _run(copy.deepcopy(blk), x, hw, 'torch', torch.bfloat16)
    ref = _run(copy.deepcopy(blk), x, hw, 'torch')
    assert_within_twin_error((out, dx, grads), twin, ref, floor=1e-3)
