"""The fused BiFormer block (``layers/biformer_fused.py``; routing, and global attention as routing with one region)
against the module composition it replaces.

Small shapes on ``DEV`` (CPU: the Triton kernels under ``TRITON_INTERPRET=1``, set by the root conftest; the GPU
box: compiled, where fp32 ``tl.dot`` runs in tf32): fp32 and fp16 against the twin composition. GPU only: bf16 at a
BiFormer-S stage-3 shape against the fp32 twin, within twice the bf16 twin's own error.
"""
from __future__ import annotations

import copy

import pytest
import torch

from backbones.layers.biformer_blocks import GLOBAL, BiFormerBlock
from backbones.layers.linear import cast_linear_weights
from _checks import assert_equals_twin, assert_within_twin_error, rel_err

FUSED = 'FusedRoutingBlockBackward'
DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
FP32_TOL = 2e-3 if DEV == 'cuda' else 1e-5      # tf32 attention dots on the GPU, exact in the interpreter


def _block(dim=64, heads=2, n_win=3, topk=2, layer_scale=None, drop_path=0.0, train=True, seed=0, global_heads=4):
    torch.manual_seed(seed)
    blk = BiFormerBlock(dim, heads, n_win, topk, drop_path=drop_path, layer_scale_init_value=layer_scale,
                        global_heads=global_heads)
    for p in blk.parameters():           # away from the init's zeros / ones, so every term matters
        torch.nn.init.normal_(p, std=0.2)
    return blk.train(train).to(DEV)


def _run(block, x, backend, dtype=None, device_type=DEV):
    """Output, input gradient and parameter gradients of ``sum(out * g)`` for a fixed random g. The RNG is seeded
    before the forward (same stochastic-depth masks on both paths); g has its own generator (the Triton
    interpreter draws from torch's RNG)."""
    block.backend = block.attn.backend = backend
    x = x.clone().requires_grad_(True)
    torch.manual_seed(5)
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None), \
            cast_linear_weights(block):
        out = block(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.device)
    (out.float() * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads, _node(out)


def _node(out):
    """Name of the autograd node under the block's final NHWC -> NCHW permute."""
    return type(out.grad_fn.next_functions[0][0]).__name__


@pytest.mark.parametrize('layer_scale, drop_path, train, topk', [
    (None, 0.0, True, 2), (0.5, 0.3, True, 2), (0.5, 0.3, False, 2), (None, 0.0, True, GLOBAL),
    (0.5, 0.3, True, GLOBAL)])
def test_fused_block_equals_composition_fp32(layer_scale, drop_path, train, topk):
    """fp32: the fused node (interpreted kernels) equals the twin composition: output, dx and every parameter
    gradient (layer scale and stochastic depth included) to fp32 rounding; routing, and the global block (its
    composition: ``scaled_dot_product_attention`` and the LCE on the attention input)."""
    blk = _block(layer_scale=layer_scale, drop_path=drop_path, train=train, topk=topk)
    x = torch.randn(2, 64, 9, 11, device=DEV)
    out, dx, grads, node = _run(blk, x, 'triton')
    ref_out, ref_dx, ref_grads, ref_node = _run(copy.deepcopy(blk), x, 'torch')
    assert FUSED in node and FUSED not in ref_node, (node, ref_node)
    assert_equals_twin((out, dx, grads), (ref_out, ref_dx, ref_grads), dict(blk.named_parameters()), FP32_TOL)


@pytest.mark.parametrize('topk', [2, GLOBAL])
def test_fused_block_fp16_within_twin_error(topk):
    """fp16 autocast with the pre-cast weights: against an fp64 reference, every output / gradient error of the
    fused node is at most twice the fp16 twin composition's (+ a floor of 2e-4, fp16's half ulp is 2.4e-4)."""
    blk = _block(layer_scale=0.5, drop_path=0.3, topk=topk)
    x = torch.randn(2, 64, 9, 11, device=DEV)
    out, dx, grads, node = _run(blk, x, 'triton', torch.float16)
    assert FUSED in node
    twin = _run(copy.deepcopy(blk), x, 'torch', torch.float16)
    ref = _run(copy.deepcopy(blk).double(), x.double(), 'torch')
    assert_within_twin_error((out, dx, grads), twin, ref, floor=2e-4)


def test_fused_block_routes_ties_by_the_rule(monkeypatch):
    """Identical regions (the qkv projection's q and k rows zero: q and k are their biases at every token, 9 x 9
    map, 3 x 3 regions) tie every affinity of a row. The fused node routes every query region to regions 0..3, as
    the twin composition does: the tie rule of ``sparse_ops.routing.select_regions`` (``torch.topk`` on the CPU
    picks others)."""
    from sparse_ops import routing
    from sparse_ops.reference import routing as twin
    blk = _block(n_win=3, topk=4)
    with torch.no_grad():
        blk.attn.qkv.weight[:2 * 64] = 0
    seen = {'fused': [], 'twin': []}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen[name].append(out[0] if isinstance(out, tuple) else out)
            return out
        return wrapped
    monkeypatch.setattr(routing, 'route_qkv', spy('fused', routing.route_qkv))
    monkeypatch.setattr(twin, 'route_regions', spy('twin', twin.route_regions))
    x = torch.randn(2, 64, 9, 9, device=DEV)
    node = _run(blk, x, 'triton')[3]
    ref_node = _run(copy.deepcopy(blk), x, 'torch')[3]
    assert FUSED in node and FUSED not in ref_node, (node, ref_node)
    assert seen['fused'] and seen['twin']
    for idx in seen['fused'] + seen['twin']:
        assert torch.equal(idx.cpu(), torch.arange(4).expand(2, 9, 4))


def test_fused_block_channels_last_input_and_frozen_weights():
    """A channels-last input (what a block passes to the next) gives what the NCHW input gives; with frozen
    parameters only x gets a gradient, equal to the composition's."""
    blk = _block()
    x = torch.randn(2, 64, 9, 11, device=DEV)
    out, dx, _, _ = _run(blk, x, 'triton')
    blk.zero_grad(set_to_none=True)
    out_cl, dx_cl, _, _ = _run(blk, x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), 'triton')
    assert torch.equal(out, out_cl) and torch.equal(dx, dx_cl)
    frozen = copy.deepcopy(blk).requires_grad_(False)
    out_f, dx_f, grads_f, node = _run(frozen, x, 'triton')
    assert FUSED in node and grads_f == {}
    _, ref_dx, _, _ = _run(copy.deepcopy(blk).requires_grad_(False), x, 'torch')
    assert rel_err(dx_f, ref_dx) < FP32_TOL


def test_fused_path_only_where_it_applies():
    """Fused: a routing or global block on the Triton path with weights in the matmul dtype. Not: the twin
    backend, autocast without the pre-cast weights (``with_cp`` turns the cast off), a global block whose head
    dim the kernels lack (64 channels / 8 heads)."""
    x = torch.randn(1, 64, 8, 8, device=DEV)

    def node(blk, backend, dtype=None, cast=True):
        blk.backend = backend
        if hasattr(blk.attn, 'backend'):
            blk.attn.backend = backend
        with torch.autocast(DEV, dtype=dtype or torch.float32, enabled=dtype is not None), \
                cast_linear_weights(blk, enabled=cast):
            return _node(blk(x.clone().requires_grad_(True)))

    assert FUSED in node(_block(), 'triton')
    assert FUSED in node(_block(), 'triton', torch.float16)
    assert FUSED not in node(_block(), 'triton', torch.float16, cast=False)
    assert FUSED not in node(_block(), 'torch')
    assert (FUSED in node(_block(), None)) == (DEV == 'cuda')     # CPU without a forced backend: the twin
    assert FUSED in node(_block(topk=GLOBAL), 'triton')
    assert FUSED not in node(_block(topk=GLOBAL), 'torch')
    assert FUSED not in node(BiFormerBlock(64, 2, 3, GLOBAL).to(DEV), 'triton')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('dim, topk, side', [(256, 16, 64), (512, GLOBAL, 32)], ids=['stage3', 'stage4-global'])
def test_fused_block_bf16_at_biformer_s_shapes_gpu(dim, topk, side):
    """H200: bf16 fused block at BiFormer-S's stage-3 shape (64 x 64, C 256, 8 heads, n_win 16, top-16) and its
    global stage-4 shape (32 x 32, C 512, 8 heads; the twin runs ``scaled_dot_product_attention``) against the
    fp32 twin, within twice the bf16 twin's error (+1e-3) for output, dx and every parameter gradient."""
    blk = _block(dim, dim // 32, 16, topk, drop_path=0.1, global_heads=8)
    x = torch.randn(2, dim, side, side, device='cuda')
    out, dx, grads, node = _run(blk, x, None, torch.bfloat16)
    assert FUSED in node
    twin = _run(copy.deepcopy(blk), x, 'torch', torch.bfloat16)
    ref = _run(copy.deepcopy(blk), x, 'torch')
    assert_within_twin_error((out, dx, grads), twin, ref, floor=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('m,n', [(131072, 192), (16384, 64), (16383, 96)])
def test_bias_gradient_column_sums_gpu(m, n):
    """The fused blocks' bias gradients (``fused_block.column_sums``: a matmul with ones from
    ``BIAS_MATMUL_ROWS`` rows, else ``sum(0)``) against the fp64 sum: within bf16's rounding of the result."""
    from backbones.layers.fused_block import column_sums
    dy = torch.randn(m, n, device='cuda', dtype=torch.bfloat16)
    got, ref = column_sums(dy), dy.double().sum(0)
    assert got.dtype == torch.bfloat16 and got.shape == (n,)
    assert ((got.double() - ref).abs() <= 2 ** -8 * ref.abs() + 1e-3 * m ** 0.5).all()
