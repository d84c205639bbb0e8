"""Multi-scale training with CUDA-graph replay on the GPU (``backbones/graphs.py``; skipped without CUDA).

The preset backbones with their default stochastic depth and graphs on (the default) train through a schedule of
input sizes like mmdet's multi-scale pipelines (16 sizes, H 480-800, W 640-1333, multiples of 32, each held for
3 steps, then earlier sizes again), under bf16 and fp16 autocast, with no-grad eval calls in between, beside the
same backbone with graphs off: every step's outputs and input gradient agree, no capture warning, at most
``max_signatures`` captured signatures, and deleting the models gives all their memory back. The CPU side of the
same rules (emulated graphs) is in ``test_graphs.py``. ``with_cp`` (no graphs) keeps the fused path and equals the
plain model.
"""
from __future__ import annotations

import gc
import warnings

import pytest
import torch

import sparse_ops

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]

SIZES = [(480 + 32 * (i % 11), 640 + 32 * ((7 * i) % 22)) for i in range(16)]
SCHEDULE = [s for s in SIZES for _ in range(3)] + SIZES[:4] + SIZES[:4]      # held 3 steps; then earlier ones again
MODELS = {
    'HWT-T': dict(type='HWT', arch='tiny'),
    'NAT-T': dict(type='NAT', arch='tiny'),
    'DiNAT-T': dict(type='DiNAT', arch='tiny'),
    'BiFormer-S': dict(type='BiFormer', arch='small'),
    'HNT-T': dict(type='HNT', arch='tiny'),
}


def _build(cfg: dict, graphs: bool):
    import backbones  # noqa: F401
    from mmengine.registry import MODELS as ROOT
    torch.manual_seed(0)
    return ROOT.build(dict(cfg, cuda_graphs=graphs)).cuda().train()


def _step(model, x, dtype, seed, grad=True):
    torch.manual_seed(seed)                                   # same stochastic-depth masks on both models
    x = x.clone().requires_grad_(grad)
    with torch.autocast('cuda', dtype=dtype), torch.set_grad_enabled(grad):
        outs = model(x)
    if not grad:
        return [o.float() for o in outs], None
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device='cuda').view(o.shape)).mean() for o in outs)
    loss.backward()
    for p in model.parameters():
        p.grad = None
    return [o.detach().float() for o in outs], x.grad.float()


def _close(a, b, what, tol):
    err, bound = (a - b).abs().max().item(), tol * b.abs().max().item() + 1e-6
    assert err <= bound, f'{what}: |graphs - eager| {err:.2e} > {bound:.2e}'


def _same_steps(ref, model, steps, what: str, tol: float = 2e-2) -> None:
    """Train ``ref`` and ``model`` through ``steps`` (``(seed, x)`` pairs, bf16): outputs and input gradients agree
    at every step."""
    for seed, x in steps:
        want, dx_want = _step(ref, x, torch.bfloat16, seed)
        got, dx_got = _step(model, x, torch.bfloat16, seed)
        for i, (a, b) in enumerate(zip(got, want)):
            _close(a, b, f'{what} step {seed} output {i}', tol)
        _close(dx_got, dx_want, f'{what} step {seed} input grad', tol)


def _settle() -> int:
    """Memory allocated once every cache that outlives a model is emptied: Python garbage, the sparse_ops caches,
    cuBLAS's per-stream workspaces (a capture stream gets its own), PyTorch's cache."""
    gc.collect()
    sparse_ops.clear_caches()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def _train_schedule(name: str, dtype: torch.dtype) -> None:
    """The schedule on a graphed and a plain model (same weights), checked step by step; everything it builds dies
    when it returns."""
    ref, gr = _build(MODELS[name], graphs=False), _build(MODELS[name], graphs=True)
    gr.load_state_dict(ref.state_dict())
    # the blocks' own fused path computes in the autocast dtype: one last-bit flip of a low-precision activation
    # is ~4e-3 of itself in bf16, ~5e-4 in fp16; graphs and eager differ only in the order of atomic adds
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    allocated = []
    with warnings.catch_warnings():
        warnings.simplefilter('error')                       # a failed capture warns: make it fail the test
        for step, (h, w) in enumerate(SCHEDULE):
            x = torch.randn(2, 3, h, w, device='cuda')
            want, dx_want = _step(ref, x, dtype, step)
            got, dx_got = _step(gr, x, dtype, step)
            for i, (a, b) in enumerate(zip(got, want)):
                _close(a, b, f'step {step} {h}x{w} output {i}', tol)
            _close(dx_got, dx_want, f'step {step} {h}x{w} input grad', tol)
            if step % 8 == 7:                                # validation in between: eval, no grad
                for m in (ref, gr):
                    m.eval()
                got, _ = _step(gr, x, dtype, step, grad=False)
                want, _ = _step(ref, x, dtype, step, grad=False)
                for i, (a, b) in enumerate(zip(got, want)):
                    _close(a, b, f'eval after step {step} output {i}', tol)
                for m in (ref, gr):
                    m.train()
            allocated.append(torch.cuda.memory_allocated())
    graphs = gr.graphs
    assert graphs.enabled and graphs.captures > 0, 'no graph was captured'
    assert len(graphs.signatures()) <= graphs.max_signatures
    print(f'{name} {dtype}: {graphs.captures} captures; allocated after 16 / 48 / {len(SCHEDULE)} steps: '
          f'{allocated[15] / 2**20:.0f} / {allocated[47] / 2**20:.0f} / {allocated[-1] / 2**20:.0f} MiB')


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', list(MODELS))
def test_multiscale_schedule_with_graphs(name, dtype):
    base = _settle()
    _train_schedule(name, dtype)
    left = _settle() - base
    print(f'{name} {dtype}: {left / 2**20:.2f} MiB allocated after deleting the models')
    assert left <= 2**20, f'{left / 2**20:.1f} MiB still allocated after deleting the models'


def test_two_graphed_models_and_ddp_hooks():
    """Two graphed HWT-T in one process, one of them inside DistributedDataParallel (world size 1, its gradient
    hooks and buckets live), trained in turn on changing sizes: parameter gradients equal the plain model's."""
    import os
    import tempfile

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    started = not dist.is_initialized()
    if started:
        store = tempfile.NamedTemporaryFile(delete=False).name
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        dist.init_process_group('nccl', init_method=f'file://{store}', rank=0, world_size=1)
    try:
        ref = _build(MODELS['HWT-T'], graphs=False)
        a, b = _build(MODELS['HWT-T'], graphs=True), _build(MODELS['HWT-T'], graphs=True)
        for m in (a, b):
            m.load_state_dict(ref.state_dict())
        ddp = DDP(b, device_ids=[torch.cuda.current_device()])
        for step, (h, w) in enumerate(SCHEDULE[:24]):
            x = torch.randn(2, 3, h, w, device='cuda')
            grads = []
            for m in (ref, a, ddp):
                torch.manual_seed(step)
                with torch.autocast('cuda', dtype=torch.bfloat16):
                    outs = m(x)
                sum(o.float().mean() for o in outs).backward()
                params = m.module.parameters() if m is ddp else m.parameters()
                grads.append(torch.cat([p.grad.flatten().float() for p in params]))
                m.zero_grad(set_to_none=True)
            _close(grads[1], grads[0], f'step {step} graphed model grads', 2e-2)
            _close(grads[2], grads[0], f'step {step} DDP graphed model grads', 2e-2)
        assert a.graphs.captures > 0 and b.graphs.captures > 0
    finally:
        if started:
            dist.destroy_process_group()


@pytest.mark.parametrize('name', ['HWT-T', 'DiNAT-T', 'BiFormer-S'])
def test_with_cp_equals_plain_under_autocast(name):
    """``with_cp`` under bf16 autocast on changing sizes: outputs and input gradients equal the plain model's."""
    ref = _build(MODELS[name], graphs=False)
    cp = _build(dict(MODELS[name], with_cp=True), graphs=False)
    cp.load_state_dict(ref.state_dict())
    _same_steps(ref, cp, [(step, torch.randn(2, 3, h, w, device='cuda')) for step, (h, w) in enumerate(SIZES[:4])],
                'with_cp')


def test_failed_capture_leaves_the_process_usable():
    """A capture that CUDA invalidates (here: a device synchronisation inside the captured step) warns, drops the
    backbone's graphs and runs eagerly, and leaves the device's random generator usable: random ops, the same
    model's stochastic depth, and another model's capture and replay, which equals the plain model."""
    from backbones import graphs

    def syncing(body, x, params):
        forward = body.forward

        def synced(inp):
            if torch.cuda.is_current_stream_capturing():
                torch.cuda.synchronize()                     # not permitted while capturing: invalidates it
            return forward(inp)
        body.forward = synced
        return graphs._make_graphed(body, x, params)

    model = _build(MODELS['HWT-T'], graphs=True)
    model.graphs.capture_fn = syncing
    x = torch.randn(2, 3, 256, 320, device='cuda')
    _step(model, x, torch.bfloat16, 0)
    with pytest.warns(UserWarning, match='capture of HWT failed'):
        _step(model, x, torch.bfloat16, 1)
    assert not model.graphs.enabled and not model.graphs.signatures()
    torch.randn(8, device='cuda')
    torch.nn.functional.dropout(torch.ones(64, device='cuda'), 0.5)
    _step(model, x, torch.bfloat16, 2)                       # eager, with stochastic depth
    ref, other = _build(MODELS['HWT-T'], graphs=False), _build(MODELS['HWT-T'], graphs=True)
    other.load_state_dict(ref.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        _same_steps(ref, other, [(seed, x) for seed in range(3)], 'graphed')
    assert other.graphs.enabled and other.graphs.captures == 1


@pytest.mark.parametrize('hw', [(256, 328), (61, 37)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('name', ['HWT-T', 'HNT-T', 'NAT-T'])
def test_capture_at_the_first_call(name, hw):
    """``warmup=1``: the first call of a signature is captured, so the capture's own warm-up step is the first run
    of the fused Triton path at that size. No capture warning, and three steps equal the plain model. (Session 20,
    H100: captures whose warm-up was the first Triton run at that size, after twin-path calls only, failed for
    HWT-T and HNT-T with "operation not permitted when stream is capturing", not yet traced to an operation;
    NAT-T captured. This order has not run on a GPU yet.)"""
    from backbones.graphs import BackboneGraphs
    ref, gr = _build(MODELS[name], graphs=False), _build(MODELS[name], graphs=True)
    gr.load_state_dict(ref.state_dict())
    gr.graphs = BackboneGraphs(warmup=1)
    x = torch.randn(2, 3, *hw, device='cuda')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        _same_steps(ref, gr, [(seed, x) for seed in range(3)], 'graphed')
    assert gr.graphs.captures == 1
