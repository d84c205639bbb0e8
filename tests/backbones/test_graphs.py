"""Training-step replay by CUDA graphs (``backbones/graphs.py``), its rules checked on CPU.

A real capture needs CUDA (``tests/backbones/test_graphs_schedule_gpu.py`` runs it). Here ``BackboneGraphs`` gets
an emulating ``capture``: either the eager body itself, or (``_static_capture``) a node that behaves as
``make_graphed_callables``' does towards autograd -- outputs detached from the capture, parameter gradients
returned as the same buffers at every backward -- so that the bookkeeping around it is exercised: when a call
captures, replays or runs eagerly, the bounded cache, pending forwards, gradient accumulation, freeing.
"""
from __future__ import annotations

import copy
import gc
import logging
import weakref

import pytest
import torch

import sparse_ops
from backbones import HNT, HWT
from backbones import graphs
from backbones.graphs import BackboneGraphs

ARCH = dict(embed_dims=16, depths=(1, 1), num_heads=(1, 2), window_size=3, mlp_ratio=2.0)


class _Counter:
    """An emulating ``capture`` that returns the eager body and counts captures and calls."""

    def __init__(self) -> None:
        self.bodies, self.calls = [], 0

    def __call__(self, body, x, params):
        self.bodies.append(weakref.ref(body))

        def fn(inp, *ps):
            self.calls += 1
            return body(inp)
        return fn


def _static_capture(body, x, params):
    """Autograd behaviour of ``make_graphed_callables`` over ``(x, *params)``: outputs are detached results, the
    backward copies the parameter gradients into buffers kept across calls, then returns those (detached) buffers."""
    bufs = [torch.zeros_like(p) for p in params]

    class _Graphed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp, *ps):
            with torch.enable_grad():
                outs = body(inp.detach())
            ctx.outs = outs
            return tuple(o.detach() for o in outs)

        @staticmethod
        def backward(ctx, *grads):
            got = torch.autograd.grad(ctx.outs, params, grads, allow_unused=True)
            for b, g in zip(bufs, got):
                b.copy_(g if g is not None else torch.zeros_like(b))
            return (None, *(b.detach() for b in bufs))
    return _Graphed.apply


def _model(capture, **kw):
    torch.manual_seed(0)
    model = HWT(arch=ARCH, out_indices=(0, 1), drop_path_rate=0.0, **kw)
    if model.graphs is not None:
        model.graphs = BackboneGraphs(capture=capture, emulate=True, **kw.pop('graph_kw', {}))
    return model


def _step(model, x, backward=True):
    outs = model(x)
    if backward:
        sum((o * o).mean() for o in outs).backward()
    return outs


def test_captures_at_the_second_call_and_replays():
    cap = _Counter()
    model = _model(cap)
    x = torch.randn(1, 3, 20, 24)
    _step(model, x)
    assert model.graphs.captures == 0 and cap.calls == 0
    _step(model, x)
    _step(model, x)
    assert model.graphs.captures == 1 and cap.calls == 2 and len(model.graphs.signatures()) == 1
    with torch.no_grad():
        model(x)                                 # no autograd: eager
    model.eval()
    model(x)                                     # eval: eager
    assert cap.calls == 2


def test_outputs_and_gradients_equal_eager():
    plain, graphed = _model(None, cuda_graphs=False), _model(_static_capture)
    graphed.load_state_dict(plain.state_dict())
    for i in range(4):
        x = torch.randn(2, 3, 20, 24)
        want, got = _step(plain, x), _step(graphed, x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        for (n, p), q in zip(plain.named_parameters(), graphed.parameters()):
            torch.testing.assert_close(q.grad, p.grad, msg=f'step {i} {n}')
        plain.zero_grad(set_to_none=True)
        graphed.zero_grad(set_to_none=True)
    assert graphed.graphs.captures == 1


def test_gradient_accumulation_adds_up():
    """Two replayed steps without zeroing the gradients add up as in eager mode (autograd hands the graph's
    gradient buffer to a None ``.grad`` as is; the next replay must not overwrite it)."""
    plain, graphed = _model(None, cuda_graphs=False), _model(_static_capture)
    graphed.load_state_dict(plain.state_dict())
    xs = [torch.randn(1, 3, 20, 24) for _ in range(5)]
    for m in (plain, graphed):
        for x in xs[:2]:
            _step(m, x)
            m.zero_grad(set_to_none=True)        # capture happened at the second step
        for x in xs[2:]:                          # three micro-steps accumulated
            _step(m, x)
    for (n, p), q in zip(plain.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=n)


def test_cache_is_bounded_lru():
    cap = _Counter()
    model = _model(cap)
    sizes = [(20, 24), (24, 20), (16, 16), (20, 24), (28, 12)]
    for h, w in sizes:
        for _ in range(2):
            _step(model, torch.randn(1, 3, h, w))
    sig = [s[0][2:] for s in model.graphs.signatures()]
    assert sig == [(16, 16), (20, 24), (28, 12)]          # (24, 20) least recently used: evicted
    assert model.graphs.captures == 4
    assert sum(r() is not None for r in cap.bodies) == 3  # the evicted capture is freed


def test_two_forwards_then_backward_run_eagerly_and_stale_backward_raises():
    cap = _Counter()
    model = _model(cap)
    x = torch.randn(1, 3, 20, 24)
    _step(model, x)
    first = model(x)                              # captured and replayed, backward pending
    second = model(x)                             # same signature pending: eager
    assert cap.calls == 1
    sum(o.sum() for o in second).backward()
    sum(o.sum() for o in first).backward(retain_graph=True)
    model(x)                                      # first's backward done: replays again (a newer replay)
    assert cap.calls == 2
    with pytest.raises(RuntimeError, match='overwrote'):
        sum(o.sum() for o in first).backward()


def test_no_capture_with_hooks_or_with_cp_and_fresh_cache_on_copy(monkeypatch):
    seen = []
    monkeypatch.setattr(graphs, 'print_log', lambda msg, logger=None, level=None: seen.append((msg, level)))
    cap = _Counter()
    model = _model(cap)
    handle = model.layers[0].register_forward_hook(lambda *a: None)
    x = torch.randn(1, 3, 20, 24)
    for _ in range(3):
        _step(model, x)
    assert model.graphs.captures == 0
    assert seen == [("HWT: no CUDA graph capture while module 'layers.0' has hooks; running eagerly", logging.INFO)]
    handle.remove()
    _step(model, x)
    assert model.graphs.captures == 1
    clone = copy.deepcopy(model)
    assert clone.graphs is not model.graphs and clone.graphs.signatures() == []
    assert HWT(arch=ARCH, out_indices=(0, 1), with_cp=True).graphs is None
    assert HNT(arch='mini').graphs is not None                # every backbone owns one (HNT too)


def test_deleting_the_model_frees_its_captures():
    cap = _Counter()
    model = _model(cap)
    x = torch.randn(1, 3, 20, 24)
    for _ in range(3):
        _step(model, x)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None and all(r() is None for r in cap.bodies)


def test_arguments():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='max_signatures'):
            BackboneGraphs(max_signatures=bad)
        with pytest.raises(ValueError, match='warmup'):
            BackboneGraphs(warmup=bad)
    with pytest.raises(ValueError, match='cuda_graphs'):
        HWT(arch=ARCH, out_indices=(0, 1), cuda_graphs='yes')


def test_backend_choice_is_part_of_the_signature():
    """A step captured under ``use_backend('triton')`` is not replayed under ``use_backend('torch')`` (nor under
    the default): the same input on another path is another signature."""
    cap = _Counter()
    model = _model(cap)
    x = torch.randn(1, 3, 20, 24)
    with sparse_ops.use_backend('torch'):
        _step(model, x)
        _step(model, x)
    assert model.graphs.captures == 1 and cap.calls == 1
    _step(model, x)                              # default backend: a new signature, first call eager
    assert model.graphs.captures == 1 and cap.calls == 1
    _step(model, x)
    assert model.graphs.captures == 2 and cap.calls == 2 and len(model.graphs.signatures()) == 2
    assert {key[-1] for key in model.graphs.signatures()} == {'torch', None}


def test_failed_capture_warns_and_runs_eagerly():
    def broken(body, x, params):
        try:
            raise RuntimeError('operation not permitted when stream is capturing')
        finally:                                # as torch.cuda.graph's exit raises while handling the op's error
            raise RuntimeError('operation failed due to a previous error during capture')
    model = _model(broken)
    x = torch.randn(1, 3, 20, 24)
    _step(model, x)
    with pytest.warns(UserWarning, match=r'capture of HWT failed.*not permitted when stream is capturing.*then'):
        outs = _step(model, x)
    assert not model.graphs.enabled and len(outs) == 2
    with sparse_ops.use_backend('torch'):
        _step(model, x)


def test_parameter_outside_the_children_is_refused_not_misaligned():
    """The graph reads parameters by the names of its body (the backbone's children): a parameter held by the
    backbone itself would shift every name; the capture refuses (warning, eager from then on) instead."""
    cap = _Counter()
    model = _model(cap)
    model.extra = torch.nn.Parameter(torch.zeros(()))       # registered on the backbone, before every child's
    x = torch.randn(1, 3, 20, 24)
    _step(model, x)
    with pytest.warns(UserWarning, match='held by the backbone itself'):
        outs = _step(model, x)
    assert not model.graphs.enabled and not cap.bodies and len(outs) == 2
