"""One description of each block's math (``backbones/layers/block_math.py``) that the module composition and the
fused node both follow, and the fused nodes' weights and gradients by name.

The fused nodes run under the Triton interpreter on CPU (``TRITON_INTERPRET=1`` from the root conftest, forced with
``sparse_ops.use_backend('triton')``); numerics against the twin are in ``test_*_fused.py``.
"""
from __future__ import annotations

import pytest
import torch

import sparse_ops
from backbones import hwt
from backbones.hwt import HWTBlock
from backbones.layers import attn_block_fused, biformer_blocks, biformer_fused, block_math, nat_blocks
from backbones.layers.biformer_blocks import GLOBAL, BiFormerBlock
from backbones.layers.nat_blocks import NATBlock, NeighborhoodAttention2d
from _checks import rel_err

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
TOL = 5e-3 if DEV == 'cuda' else 1e-5      # tf32 attention dots on the GPU, exact in the interpreter


def _hwt():
    return HWTBlock(32, 2, 3, shift=True, mlp_ratio=2.0)


def _nat():
    return NATBlock(32, NeighborhoodAttention2d(32, 2, kernel_size=3, dilation=2), mlp_ratio=2.0, layer_scale=0.5)


def _biformer(topk=2):
    return BiFormerBlock(32, 2, 2, topk, layer_scale_init_value=0.5, global_heads=2)


@pytest.mark.parametrize('make, weights, rename', [
    (_hwt, lambda b: attn_block_fused.block_weights(b, b.attn.relative_position_bias_table),
     {'attn.rpb': 'attn.relative_position_bias_table'}),
    (_nat, lambda b: attn_block_fused.block_weights(b, b.attn.rpb), {}),
    (_biformer, biformer_fused.block_weights, {}),
    (lambda: _biformer(GLOBAL), biformer_fused.block_weights, {})], ids=['hwt', 'nat', 'biformer', 'global'])
def test_weights_by_name_are_the_block_parameters_of_that_name(make, weights, rename):
    """Each fused node's weights are keyed by the block's parameter paths (HWT's bias table under NATTEN's name
    ``attn.rpb``): every name holds the parameter of that path (None for a missing bias), the Function's
    ``weight_names`` list them all, and no parameter but the layer scales (the branch factors s1, s2) is left out."""
    block = make()
    w = weights(block)
    params = dict(block.named_parameters())
    function = biformer_fused.FusedRoutingBlock if isinstance(block, BiFormerBlock) \
        else attn_block_fused.AttentionBlockFunction
    assert tuple(w) == function.weight_names
    for name, t in w.items():
        path = rename.get(name, name)
        assert (t is None and path not in params) or t is params[path], name
    covered = {rename.get(n, n) for n, t in w.items() if t is not None}
    assert set(params) - covered <= {'gamma1', 'gamma2'}


class _Trace:
    """``ops`` that log each op with its first argument when that is a name or a branch index, then run it."""

    def __init__(self, ops, log: list) -> None:
        self.ops, self.log = ops, log

    def __getattr__(self, op):
        fn = getattr(self.ops, op)

        def call(first, *rest):
            self.log.append((op, first if isinstance(first, (str, int)) else '-'))
            return fn(first, *rest)
        return call


def _traced(monkeypatch, modules, math, log):
    """``math`` (a ``block_math`` function) traced wherever ``modules`` call it."""
    def traced(ops, *args):
        return math(_Trace(ops, log), *args)
    for module in modules:
        monkeypatch.setattr(module, math.__name__, traced)


@pytest.mark.parametrize('make, x_shape, args, modules, math', [
    (_hwt, (1, 20, 32), ((4, 5),), (hwt, attn_block_fused), block_math.attention_block),
    (_nat, (1, 7, 6, 32), (), (nat_blocks, attn_block_fused), block_math.attention_block),
    (_biformer, (1, 32, 5, 6), (), (biformer_blocks, biformer_fused), block_math.routing_block),
    (lambda: _biformer(GLOBAL), (1, 32, 5, 6), (), (biformer_blocks, biformer_fused), block_math.routing_block)],
    ids=['hwt', 'nat', 'biformer', 'global'])
def test_composition_and_fused_node_follow_one_block_math(monkeypatch, make, x_shape, args, modules, math):
    """The twin composition and the fused node run the same ``block_math`` function: the same ops on the same
    names in the same order, and the fused node's result is the composition's."""
    torch.manual_seed(0)
    block = make().to(DEV)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(x_shape, device=DEV)
    logs = {}
    for backend in ('torch', 'triton'):
        logs[backend] = []
        _traced(monkeypatch, modules, math, logs[backend])
        if isinstance(block, BiFormerBlock):
            block.backend = block.attn.backend = backend
        with sparse_ops.use_backend(backend):
            out = block(x.clone().requires_grad_(True), *args)
        # the output's node, or under BiFormer's final permute
        nodes = [type(f).__name__ for f in (out.grad_fn, *(g for g, _ in out.grad_fn.next_functions)) if f]
        assert any('Fused' in n for n in nodes) == (backend == 'triton'), nodes
        logs[backend + '_out'] = out.detach()
    assert logs['torch'] == logs['triton'] and len(logs['torch']) >= 8
    assert rel_err(logs['triton_out'], logs['torch_out']) < TOL
