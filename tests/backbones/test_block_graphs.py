"""CUDA-graph replay of blocks (``layers/block_graphs.py``).

On CPU the pool emulates graphs (``GraphPool(emulate=True)``: a replay reruns the captured function on the captured
buffers), which checks the bookkeeping: when a block captures, replays or falls back to eager, the ring buffers,
the copies of non-parameter inputs, the backward's buffers. A toy block (``_Toy``) checks the rules fast; a small
BiFormer on the fused Triton path (interpreted) checks the real block against the same backbone without graphs.
A small HWT (``layers/hwt_fused.py`` blocks) the same way. On the GPU the same backbone tests run with real CUDA
graphs.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparse_ops
from backbones import HWT, BiFormer, DiNAT
from backbones.layers.block_graphs import BlockGraphs, GraphPool

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
GPU_TOL = {None: 1e-4, torch.float16: 1e-3}      # see _assert_steps_equal


class _ToyFn(torch.autograd.Function):
    """``y = x * w + m`` (w a parameter read in place, m a tensor copied in) through ``BlockGraphs``; counts the
    eager forwards and backwards in ``calls``."""

    @staticmethod
    def forward(ctx, x, w, m, graphs, calls, grad):
        def fwd(xs, inputs, copied, out, copy_input):
            w, m = inputs[0], copied[0]
            y = torch.addcmul(m, xs, w) if out is None else torch.addcmul(m, xs, w, out=out)
            return y, (xs.clone(), w), None

        def bwd(saved, aux, dout, dx_out):
            xs, ws = saved
            dx = torch.mul(dout, ws, out=dx_out) if dx_out is not None else dout * ws
            return [dx, (dout * xs).sum_to_size(ws.shape), dout.clone()]

        train = grad and any(ctx.needs_input_grad[:3])
        run = graphs.forward(x, (w,), (m,), (ctx.needs_input_grad[:3],), train, x.dtype, fwd, bwd) if graphs else None
        ctx.calls = calls
        if run is not None:
            ctx.run = run
            return run.attach(ctx)
        calls['fwd'] += 1
        y, saved, _ = fwd(x, (w,), (m,), None, True)
        ctx.run, ctx.saved = None, saved
        return y

    @staticmethod
    def backward(ctx, dout):
        if ctx.run is not None:
            return (*ctx.run.backward(dout), None, None, None)
        ctx.calls['bwd'] += 1
        xs, ws = ctx.saved
        return dout * ws, (dout * xs).sum_to_size(ws.shape), dout, None, None, None


class _ToyChain(nn.Module):
    """Three toy blocks in one stage (rings between them)."""

    def __init__(self, graphs: bool, warmup: int = 2):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(4) + 1) for _ in range(3)])
        pool = GraphPool(emulate=True)
        self.graphs = [BlockGraphs(pool, 0, j, j == 2, warmup) if graphs else None for j in range(3)]
        self.calls = {'fwd': 0, 'bwd': 0}

    def forward(self, x, masks):
        for w, m, g in zip(self.w, masks, self.graphs):
            x = _ToyFn.apply(x, w, m, g, self.calls, torch.is_grad_enabled())
        return x


def _toy_pair():
    torch.manual_seed(0)
    ref = _ToyChain(graphs=False)
    return ref, copy.deepcopy(ref), _ToyChain(graphs=True)


def _sync(dst, src):
    with torch.no_grad():
        for a, b in zip(dst.parameters(), src.parameters()):
            a.copy_(b)


def _toy_step(model, x, masks, opt=None):
    x = x.clone().requires_grad_(True)
    y = model(x, masks)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return y.detach().clone(), x.grad, grads


def test_toy_chain_replays_and_equals_eager():
    """Steps with changing inputs, masks and weights (SGD): the graphed chain equals the eager one at every step;
    it runs eagerly for ``warmup - 1`` steps, captures, then replays (no eager calls)."""
    ref, _, gr = _toy_pair()
    _sync(gr, ref)
    opt_r, opt_g = torch.optim.SGD(ref.parameters(), lr=0.01), torch.optim.SGD(gr.parameters(), lr=0.01)
    for step in range(5):
        x = torch.randn(2, 3, 5, 4)
        masks = [torch.rand(2, 1, 1, 1) for _ in range(3)]
        before = dict(gr.calls)
        out_r, dx_r, g_r = _toy_step(ref, x, masks, opt_r)
        out_g, dx_g, g_g = _toy_step(gr, x, masks, opt_g)
        torch.testing.assert_close(out_g, out_r, rtol=0, atol=0)
        torch.testing.assert_close(dx_g, dx_r, rtol=0, atol=0)
        for a, b in zip(g_g, g_r):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        eager = gr.calls['fwd'] - before['fwd'], gr.calls['bwd'] - before['bwd']
        assert eager == ((3, 3) if step == 0 else (0, 0)), (step, eager)
    assert all(g.latest(True).gen == 4 for g in gr.graphs)      # captured at step 1, replayed at 2..4


def test_toy_two_forwards_then_backward_falls_back():
    """Two forwards before one backward: the second forward may not overwrite the first's buffers, so it runs
    eagerly; gradients equal eager mode. Afterwards the chain replays again."""
    ref, _, gr = _toy_pair()
    _sync(gr, ref)
    x1, x2 = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    masks = [torch.rand(2, 1, 1, 1) for _ in range(3)]
    for _ in range(2):                                           # capture
        _toy_step(gr, x1, masks)
        gr.zero_grad(set_to_none=True)
    results = []
    for model in (ref, gr):
        before = dict(model.calls)
        a, b = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
        ya, yb = model(a, masks), model(b, masks)
        (ya.square().sum() + (yb * 3).sum()).backward()
        results.append((ya.detach(), yb.detach(), a.grad, b.grad, [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
        if model is gr:
            assert model.calls['fwd'] - before['fwd'] == 3            # the second forward: eager
    for got, want in zip(results[1][:4], results[0][:4]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(results[1][4], results[0][4]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    before = dict(gr.calls)
    _toy_step(gr, x2, masks)
    assert gr.calls == before                                     # replays again


def test_toy_retain_graph_and_unused_forward():
    """``retain_graph``: a second backward through replayed blocks gives the same gradients, even with an eval
    forward in between; a forward never backpropagated blocks replays only while its graph is alive."""
    ref, _, gr = _toy_pair()
    _sync(gr, ref)
    x = torch.randn(2, 3, 5, 4)
    masks = [torch.rand(2, 1, 1, 1) for _ in range(3)]
    for _ in range(2):
        _toy_step(gr, x, masks)
        gr.zero_grad(set_to_none=True)
    for model in (ref, gr):
        xx = x.clone().requires_grad_(True)
        y = model(xx, masks)
        y.sum().backward(retain_graph=True)
        first = xx.grad.clone()
        with torch.no_grad():
            model(torch.randn(2, 3, 5, 4), masks)
        xx.grad = None
        y.sum().backward()
        torch.testing.assert_close(xx.grad, first, rtol=0, atol=0)
    del y, xx
    kept = gr(x.clone().requires_grad_(True), masks)               # never backpropagated
    before = dict(gr.calls)
    gr(x.clone().requires_grad_(True), masks)
    assert gr.calls['fwd'] - before['fwd'] == 3                   # its buffers are still held: eager
    del kept
    before = dict(gr.calls)
    gr(x.clone().requires_grad_(True), masks)
    assert gr.calls['fwd'] == before['fwd']                       # released: replays


def _toy_schedule(gr, ref, shapes):
    """Steps of ``gr`` and ``ref`` over ``shapes``, equal outputs and input gradients at each; the number of
    eager forwards of ``gr`` at each step."""
    masks = [torch.rand(2, 1, 1, 1) for _ in range(3)]
    eager = []
    for shape in shapes:
        x = torch.randn(shape)
        before = gr.calls['fwd']
        want = _toy_step(ref, x, masks)
        got = _toy_step(gr, x, masks)
        ref.zero_grad(set_to_none=True)
        gr.zero_grad(set_to_none=True)
        for a, b in zip(got[:2], want[:2]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        eager.append(gr.calls['fwd'] - before)
    return eager


A, B, C = (2, 3, 5, 4), (2, 6, 2, 4), (2, 1, 7, 4)


def test_toy_signature_change_keeps_recent_sizes():
    """A new input shape runs eagerly until it repeats ``warmup`` times, then is captured beside the earlier one;
    a shape that comes back replays its graphs (multi-scale training); results stay equal."""
    ref, _, gr = _toy_pair()
    _sync(gr, ref)
    eager = _toy_schedule(gr, ref, [A] * 3 + [B] * 3 + [A, B, A])
    assert eager == [3, 0, 0, 3, 0, 0, 0, 0, 0]
    assert [key[1] for _, key in gr.graphs[0].signatures()] == [torch.Size(B), torch.Size(A)]


def test_toy_graph_cache_is_bounded_lru():
    """``GraphPool.max_signatures`` caps the captured signatures per block, least recently used out: with a cap of
    2 and three shapes in turn, the evicted shape runs eagerly again until it repeats; every evicted graph is
    freed (no references left), and so are all graphs when the model is deleted."""
    import gc
    import weakref
    ref, _, gr = _toy_pair()
    _sync(gr, ref)
    pool = GraphPool(emulate=True, max_signatures=2)
    gr.graphs = [BlockGraphs(pool, 0, j, j == 2, 2) for j in range(3)]
    eager = _toy_schedule(gr, ref, [A, A, B, B, C, C, A, A, C, B])
    assert eager == [3, 0, 3, 0, 3, 0, 3, 0, 0, 3]
    assert all(len(g.signatures()) == 2 for g in gr.graphs)
    assert pool.captures == 4 * 3 * 2                  # A, B, C, A again: forward and backward graph per block
    gc.collect()
    assert len(pool._live) == 2 * 3 * 2                # only the kept signatures' graphs are alive
    live = [weakref.ref(g) for g in pool._live]
    del gr
    gc.collect()
    assert all(r() is None for r in live)


def test_graph_pool_args():
    with pytest.raises(ValueError, match='max_signatures'):
        GraphPool(max_signatures=0)
    assert copy.deepcopy(GraphPool(emulate=True, max_signatures=5)).max_signatures == 5


def test_block_graphs_args_and_copies():
    with pytest.raises(ValueError, match='warmup'):
        BlockGraphs(GraphPool(), 0, 0, True, warmup=0)
    pool = GraphPool(emulate=True)
    g = BlockGraphs(pool, 1, 0, True)
    clone = copy.deepcopy(g)
    assert clone.pool is not pool and clone.pool.emulate and clone.tag == 1 and clone._entries == {}


# -- the real block ---------------------------------------------------------------------------------------------

_ARCH = dict(depths=(2, 3, 1, 1), embed_dims=(32, 32, 32, 32), head_dim=16, global_heads=2)


def _biformer(graphs: bool, emulate: bool):
    torch.manual_seed(0)
    model = BiFormer(arch=_ARCH, n_win=2, topks=(1, 2, 'global', 'global'), drop_path_rate=0.3,
                     attn_backend='triton', cuda_graphs=False)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    if graphs:
        model._attach_graphs(GraphPool(emulate=emulate))
        for stage in model.stages:
            for blk in stage:
                if blk.graphs is not None:
                    blk.graphs.warmup = 1
    model.to(DEV).train()
    for m in model.modules():       # BN eval: a conv bias before a train-mode BN has a zero gradient, pure noise
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _backbone_step(model, x, dtype, seed):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)                           # same stochastic-depth masks on both models
    with torch.autocast(DEV, dtype=dtype or torch.float32, enabled=dtype is not None):
        outs = model(x)
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view(o.shape)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach().float() for o in outs], x.grad, grads


def _assert_steps_equal(ref, gr, dtype, backend):
    """Three SGD steps of ``ref`` (no graphs) and ``gr`` (graphs; ref's weights loaded) on the same inputs under
    ``sparse_ops.use_backend(backend)``: outputs, input gradients and every parameter gradient equal at each step.
    Bitwise on CPU. On the GPU the kernels are the same but the order of atomic adds is not (nor, at times, the
    GEMM algorithm cuBLAS picks inside a capture), and the SGD steps carry that rounding into later steps: each
    tensor within ``GPU_TOL`` of its largest value (1e-4 in fp32; in fp16 a last-bit flip of an fp16 activation
    is ~1e-3 of itself) + 1e-6 for tensors whose values are all small. Measured on an H200 (session 13): in
    fresh processes at most 1e-7 (fp32) and 1e-5 (fp16) of the largest value for BiFormer, HWT and DiNAT; in fp32
    1.4e-5 for one BiFormer weight gradient at step 2, the same value on two runs, in processes that had run other
    graph tests first (a stale buffer would be off by the SGD step, ~1e-3)."""
    gr.load_state_dict(ref.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in (ref, gr)]

    worst = [0.0, '']

    def check(a, b, what):
        if DEV == 'cpu':
            assert torch.equal(a, b), what
        else:
            err, bound = (a - b).abs().max().item(), GPU_TOL[dtype] * b.abs().max().item() + 1e-6
            if err / bound > worst[0]:
                worst[:] = err / bound, what
            assert err <= bound, f'{what}: |got - want| {err:.2e} > {bound:.2e}'

    for step in range(3):
        x = torch.randn(2, 3, 29, 37, device=DEV)
        with sparse_ops.use_backend(backend):
            want = _backbone_step(ref, x, dtype, seed=step)
            got = _backbone_step(gr, x, dtype, seed=step)
        assert all(o.isfinite().all() for o in want[0])
        assert len(got[0]) == len(want[0])
        for i, (a, b) in enumerate(zip(got[0], want[0])):
            check(a, b, f'step {step} output {i}')
        check(got[1], want[1], f'step {step} dx')
        assert got[2].keys() == want[2].keys()
        for name in want[2]:
            check(got[2][name], want[2][name], f'step {step} {name}')
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    if DEV != 'cpu':
        print(f'worst |got - want| / bound: {worst[0]:.2f} ({worst[1]})')


@pytest.mark.parametrize('dtype', [None, torch.float16])
def test_biformer_graphs_equal_eager(dtype):
    """A small BiFormer on the fused Triton path with block graphs (emulated on CPU, real on the GPU) against
    the same model without: three SGD steps (capture, then replays), stochastic depth on, fp32 and fp16 autocast
    (weights pre-cast, copied into the graphs); outputs and all gradients equal (bitwise on CPU; on the GPU the
    kernels are the same, so equal up to atomics' order). Every block is graphed: 5 routing, 2 global."""
    ref, gr = _biformer(False, emulate=False), _biformer(True, emulate=DEV == 'cpu')
    _assert_steps_equal(ref, gr, dtype, backend=None)
    entries = [blk.graphs.latest(True) for stage in gr.stages for blk in stage]
    assert len(entries) == 7 and all(e.gen == 3 and e.bwd_graph is not None for e in entries)


def _perturbed(model, blocks, graphs: bool, emulate: bool):
    """``model`` with its weights drawn away from the init (so every term matters) and, with ``graphs``, block
    graphs on a fresh pool that capture at the first repeated call (``blocks``: those the backbone gives graphs);
    on ``DEV``, in training mode."""
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    if graphs:
        model._attach_graphs(GraphPool(emulate=emulate))
        for blk in blocks:
            blk.graphs.warmup = 1
    return model.to(DEV).train()


def _hwt(graphs: bool, emulate: bool):
    torch.manual_seed(0)
    arch = dict(embed_dims=16, depths=(2, 3), num_heads=(1, 2), window_size=3, mlp_ratio=2.0)
    model = HWT(arch=arch, out_indices=(0, 1), drop_path_rate=0.3, cuda_graphs=False)
    return _perturbed(model, [blk for stage in model.layers for blk in stage.blocks], graphs, emulate)


@pytest.mark.parametrize('dtype', [None, torch.float16])
def test_hwt_graphs_equal_eager(dtype):
    """A small HWT on the fused Triton path with block graphs (emulated on CPU, real on the GPU) against the same
    model without: three SGD steps, stochastic depth on, fp32 and fp16 autocast; outputs and all gradients equal
    (bitwise on CPU; on the GPU up to the order of the position-bias gradient's atomics)."""
    ref, gr = _hwt(False, emulate=False), _hwt(True, emulate=DEV == 'cpu')
    _assert_steps_equal(ref, gr, dtype, backend='triton')
    entries = [blk.graphs.latest(True) for stage in gr.layers for blk in stage.blocks]
    assert len(entries) == 5 and all(e.gen == 3 and e.bwd_graph is not None for e in entries)


def _dinat(graphs: bool, emulate: bool):
    torch.manual_seed(0)
    arch = dict(depths=(2, 3, 1, 1), embed_dims=16, num_heads=(1, 2, 2, 2), mlp_ratio=2.0, kernel_size=3,
                layer_scale=0.5)
    model = DiNAT(arch=arch, dilations=((1, 2), (1, 2, 1), (1,), (1,)), out_indices=(0, 1), drop_path_rate=0.3,
                  cuda_graphs=False)
    return _perturbed(model, [blk for stage in model.levels for blk in stage.blocks], graphs, emulate)


@pytest.mark.parametrize('dtype', [None, torch.float16])
def test_dinat_graphs_equal_eager(dtype):
    """A small DiNAT (dilations 1 and 2, layer scale) on the fused Triton path with block graphs (emulated on CPU,
    real on the GPU) against the same model without: three SGD steps, stochastic depth on, fp32 and fp16 autocast;
    outputs and all gradients equal (bitwise on CPU; on the GPU up to the order of the position-bias gradient's
    atomics). Stages 0 and 1 are graphed (out_indices stops the forward after stage 1)."""
    ref, gr = _dinat(False, emulate=False), _dinat(True, emulate=DEV == 'cpu')
    _assert_steps_equal(ref, gr, dtype, backend='triton')
    entries = [blk.graphs.latest(True) for stage in gr.levels[:2] for blk in stage.blocks]
    assert len(entries) == 5 and all(e.gen == 3 and e.bwd_graph is not None for e in entries)
