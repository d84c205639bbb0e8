"""The fused NAT / DiNAT block (``layers/nat_fused.py``) against the module composition it replaces.

Small shapes on ``DEV`` (CPU: the Triton kernels under ``TRITON_INTERPRET=1``, set by the root conftest, forced
with ``sparse_ops.use_backend('triton')``; the GPU box: compiled, where fp32 ``tl.dot`` runs in tf32): fp32 and
fp16 against the twin composition. GPU only: bf16 at a NAT-T stage-1 shape against the fp32 twin, within twice the
bf16 twin's own error.
"""
from __future__ import annotations

import copy

import pytest
import torch

import sparse_ops
from backbones import DiNAT, NAT
from backbones.layers.linear import cast_linear_weights
from backbones.layers.nat_blocks import HilbertNeighborhoodAttention1d, NATBlock, NeighborhoodAttention2d
from _checks import assert_equals_twin, assert_within_twin_error, rel_err, run_block

FUSED = 'FusedNeighborhoodBlockBackward'
DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
FP32_TOL = 5e-3 if DEV == 'cuda' else 1e-5      # tf32 attention dots on the GPU, exact in the interpreter


def _block(dim=32, heads=2, kernel=3, dilation=1, drop_path=0.0, layer_scale=None, rpb=True, train=True, seed=0):
    torch.manual_seed(seed)
    attn = NeighborhoodAttention2d(dim, heads, kernel_size=kernel, dilation=dilation, rel_pos_bias=rpb)
    blk = NATBlock(dim, attn, mlp_ratio=2.0, drop_path=drop_path, layer_scale=layer_scale)
    for p in blk.parameters():           # away from the init's zeros / ones, so every term matters
        torch.nn.init.normal_(p, std=0.2)
    return blk.train(train).to(DEV)


def _run(block, x, backend, dtype=None, device_type=DEV):
    """Output, input gradient, parameter gradients and output node of ``sum(out * g)`` (``_checks.run_block``)."""
    out, dx, grads, node_of = run_block(block, x, backend, dtype, device_type)
    return out, dx, grads, _node_names(node_of)


def _node_names(out) -> str:
    """Names of the autograd nodes within two steps of ``out`` (the fused node sits under the output's view)."""
    fn, names = out.grad_fn, []
    for _ in range(3):
        if fn is None:
            break
        names.append(type(fn).__name__)
        fn = next((f for f, _ in fn.next_functions if f is not None), None)
    return ' '.join(names)


@pytest.mark.parametrize('dilation, drop_path, layer_scale, rpb, train, hw', [
    (1, 0.0, None, True, True, (5, 7)),
    (2, 0.3, 0.5, True, True, (9, 11)),
    (3, 0.3, None, True, False, (9, 10)),
    (2, 0.0, 0.5, True, False, (6, 6)),
    (1, 0.0, None, False, True, (1, 2)),
])
def test_fused_block_equals_composition_fp32(dilation, drop_path, layer_scale, rpb, train, hw):
    """fp32: the fused node (interpreted kernels) equals the twin composition: output, dx and every parameter
    gradient (dilations, stochastic depth, layer scale in train and eval, no bias table, a map smaller than the
    kernel) to fp32 rounding."""
    blk = _block(dilation=dilation, drop_path=drop_path, layer_scale=layer_scale, rpb=rpb, train=train)
    x = torch.randn(2, *hw, 32, device=DEV)
    out, dx, grads, node = _run(blk, x, 'triton')
    ref_out, ref_dx, ref_grads, ref_node = _run(copy.deepcopy(blk), x, 'torch')
    assert FUSED in node and FUSED not in ref_node, (node, ref_node)
    assert out.shape == x.shape
    assert_equals_twin((out, dx, grads), (ref_out, ref_dx, ref_grads), dict(blk.named_parameters()), FP32_TOL)


def test_fused_block_fp16_within_twin_error():
    """fp16 autocast with the pre-cast weights: against an fp64 reference, every output / gradient error of the
    fused node is at most twice the fp16 twin composition's (+ a floor of 2e-4, fp16's half ulp is 2.4e-4)."""
    blk = _block(dilation=2, drop_path=0.3, layer_scale=0.5)
    x = torch.randn(2, 9, 8, 32, device=DEV)
    out, dx, grads, node = _run(blk, x, 'triton', torch.float16)
    assert FUSED in node
    twin = _run(copy.deepcopy(blk), x, 'torch', torch.float16)
    ref = _run(copy.deepcopy(blk).double(), x.double(), 'torch')
    assert_within_twin_error((out, dx, grads), twin, ref, floor=2e-4)


def test_fused_block_frozen_weights_and_no_grad():
    """Frozen parameters: only x gets a gradient, equal to the composition's. Without autograd the fused forward
    gives the recorded one's output."""
    blk = _block(dilation=2)
    x = torch.randn(2, 7, 6, 32, device=DEV)
    frozen = copy.deepcopy(blk).requires_grad_(False)
    out_f, dx_f, grads_f, node = _run(frozen, x, 'triton')
    assert FUSED in node and grads_f == {}
    _, ref_dx, _, _ = _run(copy.deepcopy(frozen), x, 'torch')
    assert rel_err(dx_f, ref_dx) < FP32_TOL
    with torch.no_grad(), sparse_ops.use_backend('triton'):
        out_ng = frozen(x)
    assert torch.equal(out_ng, out_f)


def test_fused_path_only_where_it_applies():
    """Fused: 2D neighbourhood attention on the Triton path with weights in the matmul dtype. Not: the twin
    backend, CPU without a forced backend, autocast without the pre-cast weights (``with_cp`` turns the cast
    off), a block around HNT's 1D attention."""
    x = torch.randn(1, 4, 5, 32, device=DEV)

    def node(backend, dtype=None, cast=True):
        blk = _block()
        with sparse_ops.use_backend(backend), \
                torch.autocast(DEV, dtype=dtype or torch.float32, enabled=dtype is not None), \
                cast_linear_weights(blk, enabled=cast):
            return _node_names(blk(x.clone().requires_grad_(True)))

    assert FUSED in node('triton')
    assert FUSED in node('triton', torch.float16)
    assert FUSED not in node('triton', torch.float16, cast=False)
    assert FUSED not in node('torch')
    assert (FUSED in node(None)) == (DEV == 'cuda')     # CPU without a forced backend: the twin
    blk_1d = NATBlock(32, HilbertNeighborhoodAttention1d(32, 2, kernel_size=5), mlp_ratio=2.0).to(DEV)
    with sparse_ops.use_backend('triton'):
        assert FUSED not in _node_names(blk_1d(x.view(1, 20, 32).clone().requires_grad_(True), (4, 5)))


def _step(model, x, backend):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(0)                              # same stochastic-depth masks on both models
    with sparse_ops.use_backend(backend):
        outs = model(x)
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view(o.shape)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach().float() for o in outs], x.grad, grads


@pytest.mark.parametrize('cls', [NAT, DiNAT])
def test_fused_backbone_equals_twin_fp32(cls):
    """A small NAT / DiNAT (dilations 1 and 2, layer scale) whose every block takes the fused node (interpreted on
    CPU) against the same weights on the twin path: outputs, input gradient and all parameter gradients, stochastic
    depth on."""
    arch = dict(depths=(2, 2, 1, 1), embed_dims=16, num_heads=(1, 2, 2, 2), mlp_ratio=2.0, kernel_size=3,
                layer_scale=0.5)
    extra = dict(dilations=((1, 2), (1, 2), (1,), (1,))) if cls is DiNAT else {}
    model = cls(arch=arch, out_indices=(0, 1), drop_path_rate=0.3, cuda_graphs=False, **extra).to(DEV)
    model.init_weights()
    x = torch.randn(2, 3, 45, 37, device=DEV)
    got = _step(model, x, 'triton')
    want = _step(copy.deepcopy(model), x, 'torch')
    for a, b in zip(got[0], want[0]):
        assert rel_err(a, b) < FP32_TOL
    assert rel_err(got[1], want[1]) < FP32_TOL
    assert got[2].keys() == want[2].keys()
    assert {n for n in want[2] if n.startswith('levels.0')} == {n for n, _ in model.levels[0].named_parameters(
        prefix='levels.0')}
    for name in want[2]:
        assert rel_err(got[2][name], want[2][name]) < FP32_TOL, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('dilation', [1, 8])
def test_fused_block_bf16_at_nat_t_stage1_gpu(dilation):
    """H200: bf16 fused block at NAT-T / DiNAT-T's stage-1 shape (128 x 128 map of a 512² input, C 64, 2 heads,
    kernel 7) against the fp32 twin, within twice the bf16 twin's error (+1e-3) for output, dx and every parameter
    gradient."""
    blk = _block(64, 2, 7, dilation=dilation, drop_path=0.1)
    x = torch.randn(2, 128, 128, 64, device='cuda')
    out, dx, grads, node = _run(blk, x, None, torch.bfloat16)
    assert FUSED in node
    twin = _run(copy.deepcopy(blk), x, 'torch', torch.bfloat16)
    ref = _run(copy.deepcopy(blk), x, 'torch')
    assert_within_twin_error((out, dx, grads), twin, ref, floor=1e-3)
