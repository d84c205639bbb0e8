"""GPU checks of whole backbones at real shapes (skipped without CUDA).

- The Triton path equals the twin path: with bf16 autocast, |triton - fp32 twin| <= 2 |bf16 twin - fp32 twin|
  (+ a small floor) for every output and every parameter gradient. BiFormer's top-k routing is discontinuous: two
  runs whose inputs differ by rounding noise can route a few query regions differently at near-ties, which is a
  large local change that says nothing about the attention kernels. So the routes of the fp32 reference run are
  recorded and replayed in both bf16 runs (``_PinnedRoutes``); the kernels are then compared on the same pattern.
- fp16 autocast training steps stay finite; ``torch.compile`` of a backbone matches eager (inference and a
  training step).
"""
import copy

import pytest
import torch
import torch._inductor.exc  # noqa: F401  (InductorError, for an xfail below)

from backbones.base import MODELS
from sparse_ops import use_backend

pytestmark = pytest.mark.gpu

CASES = {
    'HWT-T': dict(type='HWT', arch='tiny', drop_path_rate=0.0),
    'HNT-T': dict(type='HNT', arch='tiny', drop_path_rate=0.0),
    'BiFormer-S': dict(type='BiFormer', arch='small', drop_path_rate=0.0, n_win=8),
    'NAT-T': dict(type='NAT', arch='tiny', drop_path_rate=0.0),
    'DiNAT-T': dict(type='DiNAT', arch='tiny', drop_path_rate=0.0, dilations='coco'),
}


class _PinnedRoutes:
    """Records the routes (``(B, R, topk)`` region ids) of every routing call, then replays them in call order.

    Patches the routing functions the ops use (twin: ``reference.routing.route_regions``, Triton:
    ``triton_api.route_topk`` and, for ``qkv_attention`` and the fused BiFormer block,
    ``triton_api.route_topk_triton``); all are looked up as module globals at call time.
    """

    def __init__(self, monkeypatch):
        from sparse_ops import triton_api
        from sparse_ops.reference import routing
        self.recorded, self.cursor, self.recording = [], 0, True
        orig = routing.route_regions

        def twin_routes(q, k, n_win, topk):
            if self.recording:
                self.recorded.append(orig(q, k, n_win, topk))
                return self.recorded[-1]
            return self._next()

        monkeypatch.setattr(routing, 'route_regions', twin_routes)
        monkeypatch.setattr(triton_api, 'route_topk', lambda q, k, n_win, topk, counts: self._next())
        def triton_routes(qkv, n_win, topk):          # (topk_idx, route matrix) as route_topk_triton returns
            idx = self._next()
            r = idx.shape[1]
            return idx, torch.zeros(idx.shape[0], r, r, device=idx.device).scatter_(2, idx, 1.0)

        monkeypatch.setattr(triton_api, 'route_topk_triton', triton_routes)

    def replay(self):
        self.recording, self.cursor = False, 0

    def _next(self):
        assert not self.recording, 'the fp32 twin run must come first and record the routes'
        self.cursor += 1
        return self.recorded[self.cursor - 1]


def _run(model, x, path, dtype):
    model.zero_grad(set_to_none=True)
    with use_backend(path), torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
        outs = model(x)
    g = torch.Generator(device='cuda').manual_seed(3)
    sum((o.float() * torch.randn(o.shape, device='cuda', generator=g)).sum() for o in outs).backward()
    return [o.float() for o in outs], {n: p.grad.float().clone() for n, p in model.named_parameters()}


BIFORMER_GRADS = pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason='measured on H200s (2026-11-21), routes pinned, fp32 O and fp32 P V in the forward: outputs '
    'within the rule; 8/504 (256x328) and 7/504 (61x37) gradients at 2.2-4x the twin\'s error, all sums over every '
    'token (stage-3 biases, norm and pos-embed weights). The rule does not separate kernels from rounding luck for '
    'BiFormer: a second bf16 twin run (input x (1 + 1e-3 noise), its own fp32 reference) breaks it on 2/504 and '
    '24/504 tensors itself (HWT-T, NAT-T: 0). Against the envelope of the two twin runs, 0 and 2 Triton tensors are '
    'off in the first run but 17 and 1 in the second (stage-3 residual-stream sums at 256x328, 2-4x): a small excess '
    'there is not ruled out. Record: docs/benchmarks.md, session 6')


@pytest.mark.parametrize('name', [n if n != 'BiFormer-S' else pytest.param(n, marks=BIFORMER_GRADS)
                                  for n in CASES])
@pytest.mark.parametrize('hw', [(256, 328), (61, 37)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_triton_path_equals_twin_path(name, hw, monkeypatch):
    routes = _PinnedRoutes(monkeypatch)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = MODELS.build(dict(CASES[name])).cuda().train()
    with torch.no_grad():  # make every parameter matter (zero-init biases and tables too)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(2, 3, *hw, device='cuda')
    ref_out, ref_grad = _run(model, x, 'torch', torch.float32)
    routes.replay()
    twin_out, twin_grad = _run(model, x, 'torch', torch.bfloat16)
    routes.replay()
    tri_out, tri_grad = _run(model, x, 'triton', torch.bfloat16)
    pairs = [(f'out{i}', r, t, k) for i, (r, t, k) in enumerate(zip(ref_out, twin_out, tri_out))]
    pairs += [(n, ref_grad[n], twin_grad[n], tri_grad[n]) for n in ref_grad]
    assert len(pairs) > 4
    # a gradient that is zero in exact arithmetic (a conv bias right before BatchNorm) has an fp32 reference of pure
    # rounding noise: measure every error against at least 1e-4 of the largest reference gradient
    floor = 1e-4 * max(r.abs().max() for _, r, _, _ in pairs)
    bad = []
    for key, ref, twin, tri in pairs:
        scale = ref.abs().max().clamp(min=floor)
        err_twin, err_tri = (twin - ref).abs().max() / scale, (tri - ref).abs().max() / scale
        if err_tri > 2 * err_twin + 2e-3:
            bad.append(f'{key}: triton {err_tri:.2e} vs twin {err_twin:.2e}')
    assert not bad, f'{name}: {len(bad)}/{len(pairs)} tensors off:\n' + '\n'.join(bad)


@pytest.mark.parametrize('name', list(CASES))
def test_fp16_autocast_training_steps(name):
    model = MODELS.build(dict(CASES[name])).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler('cuda')
    x = torch.randn(2, 3, 224, 288, device='cuda')
    for _ in range(2):
        with torch.autocast('cuda', dtype=torch.float16):
            loss = sum(o.float().pow(2).mean() for o in model(x))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)


@pytest.mark.parametrize('name', ['HWT-T', 'NAT-T', 'BiFormer-S'])
def test_torch_compile_matches_eager(name):
    """fp32 (no autocast): compiled and eager run the same kernels, so they agree to fp32 fusion noise."""
    model = MODELS.build(dict(CASES[name])).cuda().eval()
    compiled = torch.compile(copy.deepcopy(model))
    x = torch.randn(1, 3, 224, 256, device='cuda')
    with torch.no_grad():
        eager, comp = model(x), compiled(x)
    for e, c in zip(eager, comp):
        assert e.shape == c.shape
        err = ((c - e).abs().max() / e.abs().max()).item()
        assert err < 1e-3, f'{name}: compiled vs eager relative error {err:.2e}'


INDUCTOR_NAT_BUG = pytest.mark.xfail(
    strict=True, raises=torch._inductor.exc.InductorError,
    reason='torch 2.11 Inductor fails compiling the NAT-T training graph (AssertionError in '
    '_inductor/tiling_utils.py, measured on an H200 2026-11-21); NAT-T inference compiles (test above)')


@pytest.mark.parametrize('name', ['HWT-T', pytest.param('NAT-T', marks=INDUCTOR_NAT_BUG), 'BiFormer-S'])
def test_torch_compile_training_step_matches_eager(name):
    """A training step (fwd + bwd, fp32) of the compiled backbone: Inductor around the registered attention ops and
    their autograd. Outputs and every parameter gradient agree with eager to fp32 fusion noise: 1e-3 of the
    tensor's largest value, or, for a gradient that is zero in exact arithmetic (a conv bias right before
    BatchNorm: both runs give rounding noise), below 1e-4 of the largest gradient."""
    torch.manual_seed(0)
    model = MODELS.build(dict(CASES[name])).cuda().train()
    compiled = torch.compile(copy.deepcopy(model))
    x = torch.randn(2, 3, 224, 256, device='cuda')
    out_e, grad_e = _run(model, x, 'triton', torch.float32)
    out_c, grad_c = _run(compiled, x, 'triton', torch.float32)
    grad_c = {n.removeprefix('_orig_mod.'): g for n, g in grad_c.items()}
    assert len(out_c) == len(out_e) and grad_c.keys() == grad_e.keys()
    pairs = [(f'out{i}', e, c) for i, (e, c) in enumerate(zip(out_e, out_c))]
    pairs += [(n, grad_e[n], grad_c[n]) for n in grad_e]
    floor = 1e-4 * max(e.abs().max() for _, e, _ in pairs)
    bad = []
    for key, e, c in pairs:
        err, top = (c - e).abs().max(), e.abs().max()
        if err > (1e-3 * top if top > floor else floor):
            bad.append(f'{key}: |compiled - eager| {err:.2e}, |eager| {top:.2e}')
    assert not bad, f'{name}: {len(bad)}/{len(pairs)} tensors differ:\n' + '\n'.join(bad)
