"""``torch.compile`` of a whole backbone traces it as one graph (``fullgraph=True``: any graph break raises) over the
registered Triton attention op, and the compiled model computes what the eager one does.

What used to break the graph: the ``use_backend`` context variable, the pattern / Hilbert-order builders (host syncs
while Dynamo traced them), ``hasattr`` on shapes, and the ``torch.compiler.disable`` on NAT's downsampler. Runs on
the GPU when one is present, else on CPU tensors under the Triton interpreter (Dynamo's backend ``eager``: tracing
is what is tested; the GPU tests in test_gpu_backbones.py run Inductor). BiFormer needs a GPU here: its routing
launches Triton kernels directly, which Dynamo traces on a GPU but not through the CPU interpreter.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo.testing as dt

import sparse_ops
from backbones import HNT, HWT, NAT, BiFormer, DiNAT

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
NAT_ARCH = dict(depths=(1, 1, 1, 1), embed_dims=16, num_heads=(1, 2, 2, 2), mlp_ratio=2.0, kernel_size=3)
BUILDERS = {
    'HWT': lambda: HWT(arch=dict(embed_dims=16, depths=(2, 1), num_heads=(1, 2), window_size=3, mlp_ratio=2.0),
                       out_indices=(0, 1), cuda_graphs=False),
    'NAT': lambda: NAT(arch=NAT_ARCH, out_indices=(0, 1), cuda_graphs=False),
    'DiNAT': lambda: DiNAT(arch=NAT_ARCH, dilations=((2,), (1,), (1,), (1,)), out_indices=(0, 1), cuda_graphs=False),
    'HNT': lambda: HNT(arch=dict(NAT_ARCH, kernel_size=5), out_indices=(0, 1), cuda_graphs=False),
    'BiFormer': lambda: BiFormer(arch=dict(depths=(1, 1, 1, 1), embed_dims=(32, 32, 32, 32), head_dim=16,
                                           global_heads=2), out_indices=(0, 1), cuda_graphs=False),
}
FAST = ('HWT',)         # the default run's representative; the others are marked slow (the interpreter is slow)
GPU_ONLY = {'BiFormer': 'routing launches Triton kernels that Dynamo traces only on a GPU',
            'DiNAT': "NAT's path with dilation; on CPU the interpreter makes it 45 s"}


def _case(name):
    marks = [] if name in FAST else [pytest.mark.slow]
    if name in GPU_ONLY and DEV == 'cpu':
        marks.append(pytest.mark.skip(reason=GPU_ONLY[name]))
    return pytest.param(name, marks=marks)


def _step(model, x):
    """Outputs and parameter gradients of one fwd + bwd with fixed stochastic-depth draws."""
    torch.manual_seed(1)
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    return [o.detach() for o in outs], {n.removeprefix('_orig_mod.'): p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize('name', [_case(n) for n in BUILDERS])
def test_whole_backbone_compiles_to_one_graph(name):
    torch.manual_seed(0)
    model = BUILDERS[name]().to(DEV).train()
    twin = copy.deepcopy(model)
    counter = dt.CompileCounter()
    compiled = torch.compile(twin, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 52, 60, device=DEV)
    with sparse_ops.use_backend('triton'):
        want, want_grads = _step(model, x)
        got, got_grads = _step(compiled, x)
        compiled(x)                                   # the same size again: no recompilation
    assert counter.frame_count == 1
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert got_grads.keys() == want_grads.keys()
    assert sum(g is not None for g in got_grads.values()) > len(got_grads) // 2
    for n, w in want_grads.items():
        g = got_grads[n]
        assert (g is None) == (w is None), n
        if w is not None:
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=n)
