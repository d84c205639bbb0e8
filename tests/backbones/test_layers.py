"""Shared blocks: layout helpers, Hilbert reordering, stems, downsamplers, MLP."""
import math

import pytest
import torch
import torch.nn.functional as F

import sparse_ops
from backbones.layers import (Conv2d, ConvDownsampler, ConvTokenizer, Linear, Mlp, PatchEmbed, PatchMerging,
                              ResidualDropPath, cast_linear_weights, from_hilbert,
                              nchw_to_nhwc, nhwc_to_nchw, to_hilbert)


@pytest.mark.parametrize('hw', [(1, 1), (1, 7), (5, 3), (8, 8), (9, 13)], ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_hilbert_round_trip_and_order(hw):
    h, w = hw
    x = torch.randn(2, 3, h, w)
    tokens = to_hilbert(x)
    assert tokens.shape == (2, h * w, 3)
    order = sparse_ops.hilbert_order(h, w)
    torch.testing.assert_close(tokens[:, 0], x.flatten(2)[:, :, order[0]])
    torch.testing.assert_close(tokens[:, -1], x.flatten(2)[:, :, order[-1]])
    torch.testing.assert_close(to_hilbert(nchw_to_nhwc(x), channels_last=True), tokens)
    back = from_hilbert(tokens, hw)
    assert back.is_contiguous()
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(from_hilbert(tokens, hw, channels_last=True), nchw_to_nhwc(x))
    assert nhwc_to_nchw(nchw_to_nhwc(x)).equal(x)


def test_hilbert_helpers_reject_bad_shapes():
    with pytest.raises(ValueError, match='4D'):
        to_hilbert(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match='hw='):
        from_hilbert(torch.zeros(1, 10, 3), (3, 3))


@pytest.mark.parametrize('hw', [(1, 1), (4, 8), (5, 11), (17, 2)], ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_patch_embed(hw):
    """The patch GEMM equals the stride-p conv (values and parameter gradients, fp32 and CPU bf16 autocast)."""
    embed = PatchEmbed(3, 6, patch_size=4)
    x = torch.randn(2, 3, *hw)
    g = torch.randn(2, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4), 6)
    padded = F.pad(x, (0, (-hw[1]) % 4, 0, (-hw[0]) % 4))
    def conv(t, low):
        # the reference conv in fp32 on bf16-rounded operands where autocast would cast them: PyTorch's own CPU bf16
        # conv (oneDNN) returned garbage for the 17x2 input on a machine with AMX (seen 2026-12-04)
        cast = (lambda v: v.bfloat16().float()) if low else (lambda v: v)
        y = F.conv2d(cast(F.pad(t, (0, (-hw[1]) % 4, 0, (-hw[0]) % 4))), cast(embed.proj.weight),
                     cast(embed.proj.bias), stride=4)
        return embed.norm(y.permute(0, 2, 3, 1))

    for autocast in (False, True):
        results = []
        for fn in (embed, None):
            embed.zero_grad(set_to_none=True)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast and fn is not None):
                out = fn(x) if fn is not None else conv(x, autocast)
            (out.float() * g).sum().backward()
            results.append((out, [p.grad.clone() for p in embed.parameters()]))
        (out, grads), (want, want_grads) = results
        assert out.shape == g.shape and out.dtype == (torch.bfloat16 if autocast else torch.float32)  # autocast's
        tol = dict(atol=2e-2, rtol=2e-2) if autocast else {}
        torch.testing.assert_close(out.float(), want, **tol)
        for got_g, want_g in zip(grads, want_grads):     # bf16 GEMM gradients: a few bf16 ulps (2**-8 each) off
            torch.testing.assert_close(got_g, want_g, **(dict(atol=5e-2, rtol=5e-2) if autocast else {}))
    assert padded.shape[-2:] == (4 * g.shape[1], 4 * g.shape[2])
    with torch.no_grad():                                  # any memory layout of the image
        torch.testing.assert_close(embed(x.contiguous(memory_format=torch.channels_last)), embed(x))
    assert PatchEmbed(3, 6, norm=False).norm is None


@pytest.mark.parametrize('hw', [(1, 1), (4, 6), (5, 7)], ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_patch_merging(hw):
    merge = PatchMerging(2)
    x = torch.randn(1, *hw, 2)
    out = merge(x)
    assert out.shape == (1, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2), 4)
    # Swin's order: (row, col) offsets (0,0), (1,0), (0,1), (1,1); zero padding for odd sizes
    padded = F.pad(x, (0, 0, 0, hw[1] % 2, 0, hw[0] % 2))
    cat = torch.cat([padded[:, 0, 0], padded[:, 1, 0], padded[:, 0, 1], padded[:, 1, 1]], dim=-1)
    torch.testing.assert_close(out[:, 0, 0], merge.reduction(merge.norm(cat)))
    assert merge.reduction.bias is None and merge.norm.normalized_shape == (8,)


@pytest.mark.parametrize('hw', [(1, 1), (7, 9), (16, 16)], ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_nat_stem_and_downsampler(hw):
    out = ConvTokenizer(3, 8)(torch.randn(1, 3, *hw))
    assert out.shape == (1, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4), 8)
    down = ConvDownsampler(8)
    assert down(out).shape == (1, math.ceil(out.shape[1] / 2), math.ceil(out.shape[2] / 2), 16)
    assert down.reduction.bias is None
    assert [n for n, _ in ConvTokenizer(3, 8).named_parameters()] == [
        'proj.0.weight', 'proj.0.bias', 'proj.1.weight', 'proj.1.bias', 'norm.weight', 'norm.bias']


def test_mlp():
    mlp = Mlp(4, 16)
    assert mlp(torch.randn(2, 3, 4)).shape == (2, 3, 4)
    assert [n for n, _ in mlp.named_parameters()] == ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    assert Mlp(4, 8, out_features=2)(torch.randn(1, 4)).shape == (1, 2)


@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16-autocast'])
def test_mlp_gelu_recompute_equals_the_plain_mlp(autocast):
    """``recompute_act=True`` (GELU recomputed in the backward, fused-path default on CUDA) gives the plain MLP's
    output and gradients exactly, and does not keep ``gelu(h)`` alive for the backward."""
    import weakref
    torch.manual_seed(0)
    plain = Mlp(8, 24, recompute_act=False)
    fused = Mlp(8, 24, recompute_act=True)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 3, 8)
    grad = torch.randn(2, 5, 3, 8)
    results = []
    for mlp in (plain, fused):
        xi = x.clone().requires_grad_()
        acts = []
        handle = mlp.act.register_forward_hook(lambda m, i, o: acts.append(weakref.ref(o)))
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = mlp(xi)
        handle.remove()
        kept = acts[0]() is not None          # gelu(h) still alive = saved for the backward
        out.float().backward(grad)
        results.append((out, xi.grad, [p.grad for p in mlp.parameters()], kept))
    (o1, g1, p1, kept1), (o2, g2, p2, kept2) = results
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert kept1 and not kept2
    assert not Mlp(8, 24)._recompute(x.requires_grad_())      # auto: CPU tensors take the plain path
    with sparse_ops.use_backend('torch'):
        assert not Mlp(8, 24)._recompute(torch.zeros(1, 8, device='meta'))


@pytest.mark.parametrize('hw', [(4, 6), (5, 7)], ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_patch_merging_concatenates_in_swins_order(hw):
    """One-copy merge == Swin's cat of the four strided slices [(0,0), (1,0), (0,1), (1,1)] (odd sizes zero-padded)."""
    torch.manual_seed(0)
    merge = PatchMerging(3)
    x = torch.randn(2, *hw, 3, requires_grad=True)
    xp = torch.nn.functional.pad(x, (0, 0, 0, hw[1] % 2, 0, hw[0] % 2))
    cat = torch.cat([xp[:, 0::2, 0::2], xp[:, 1::2, 0::2], xp[:, 0::2, 1::2], xp[:, 1::2, 1::2]], dim=-1)
    want = merge.reduction(merge.norm(cat))
    got = merge(x)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    gx_want, = torch.autograd.grad(want, x, g)
    gx_got, = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(gx_got, gx_want)


def test_hilbert_token_permutation_gradients_are_the_inverse_gather():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: to_hilbert(t), (x,))
    tok = torch.randn(2, 35, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: from_hilbert(t, (5, 7)), (tok,))


def test_residual_drop_path_is_identity_add_in_eval_and_per_sample_in_training():
    torch.manual_seed(0)
    x, y, gamma = torch.randn(4000, 2, 3), torch.rand(4000, 2, 3) + 1, torch.rand(3) + 0.5
    rdp = ResidualDropPath(0.25)
    rdp.eval()
    assert rdp(x, y).equal(x + y)
    torch.testing.assert_close(rdp(x, y, gamma), x + gamma * y)
    rdp.train()
    out = rdp(x, y, gamma)
    branch = (out - x) / (gamma * y)                     # per sample: 0 (dropped) or 1 / keep_prob
    per_sample = branch.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample), rtol=1e-4, atol=1e-4)
    kept = per_sample[:, 0] > 0.5
    torch.testing.assert_close(per_sample[kept, 0], torch.full((int(kept.sum()),), 1 / 0.75), rtol=1e-4, atol=1e-4)
    assert (per_sample[~kept].abs() < 1e-4).all()
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    # gradients: x gets g, y gets g * mask * gamma, gamma gets sum(g * y * mask)
    x.requires_grad_(True)
    y.requires_grad_(True)
    g_param = gamma.clone().requires_grad_(True)
    torch.manual_seed(1)
    out = rdp(x, y, g_param)
    out.sum().backward()
    torch.manual_seed(1)
    scale = torch.empty(4000, 1, 1).bernoulli_(0.75).div_(0.75)
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    torch.testing.assert_close(y.grad, (scale * gamma).expand_as(y))
    torch.testing.assert_close(g_param.grad, (y.detach() * scale).sum((0, 1)))
    with pytest.raises(ValueError, match='drop_prob'):
        ResidualDropPath(1.0)


@pytest.mark.parametrize('with_bias', [True, False])
def test_grouped_weight_cast_matches_autocast_casts(with_bias):
    """``cast_linear_weights``: the same bf16 outputs and fp32 parameter gradients as autocast's per-layer casts;
    the layers fall back to plain nn.Linear outside the block, without autocast and under ``enabled=False``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(Linear(8, 16, bias=with_bias), torch.nn.GELU(), Linear(16, 4), torch.nn.LayerNorm(4))
    x = torch.randn(3, 5, 8)

    def run(grouped):
        net.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            with cast_linear_weights(net, enabled=grouped):
                assert all((m._low is not None) == grouped for m in net if isinstance(m, Linear))
                out = net(x)
        assert all(m._low is None for m in net if isinstance(m, Linear))
        out.float().square().sum().backward()
        return out, [p.grad.clone() for p in net.parameters()]

    out_ref, grads_ref = run(False)
    out, grads = run(True)
    assert out.dtype == out_ref.dtype
    torch.testing.assert_close(out, out_ref, atol=0, rtol=0)
    for g, r, p in zip(grads, grads_ref, net.parameters()):
        assert g.dtype == p.dtype == torch.float32 and g.shape == p.shape
        torch.testing.assert_close(g, r, atol=0, rtol=0)
    with cast_linear_weights(net):                       # autocast off: nothing is cast
        assert all(m._low is None for m in net if isinstance(m, Linear))


@pytest.mark.parametrize('with_bias', [True, False])
def test_grouped_weight_cast_covers_depthwise_convs(with_bias):
    """``Conv2d`` inside ``cast_linear_weights`` (BiFormer's pos-embed and LCE convs): the same bf16 outputs and
    fp32 parameter gradients as autocast's own casts, one grouped cast for convs and Linears together."""
    torch.manual_seed(0)
    conv = Conv2d(6, 6, 3, padding=1, groups=6, bias=with_bias)
    lin = Linear(6, 6)
    x = torch.randn(2, 6, 5, 7, requires_grad=True)

    def run(grouped):
        for p in (*conv.parameters(), *lin.parameters(), x):
            p.grad = None
        holder = torch.nn.ModuleList([conv, lin])
        with torch.autocast('cpu', dtype=torch.bfloat16):
            with cast_linear_weights(holder, enabled=grouped):
                assert (conv._low is not None) == grouped and (lin._low is not None) == grouped
                out = lin((x + conv(x)).permute(0, 2, 3, 1))
        assert conv._low is None
        out.float().square().sum().backward()
        return out, [t.grad.clone() for t in (*conv.parameters(), *lin.parameters(), x)]

    out_ref, grads_ref = run(False)
    out, grads = run(True)
    assert out.dtype == out_ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, out_ref, atol=0, rtol=0)
    for g, r in zip(grads, grads_ref):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, r, atol=0, rtol=0)


@pytest.mark.parametrize('cfg', [dict(type='HWT', arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2],
                                                              window_size=3, mlp_ratio=2), out_indices=(0, 1)),
                                 dict(type='NAT', arch='mini'), dict(type='BiFormer', arch='tiny', n_win=2)],
                         ids=['HWT', 'NAT', 'BiFormer'])
def test_backbones_cast_their_linear_weights_in_one_go(cfg, monkeypatch):
    """Every Linear of a backbone gets its weights from the grouped cast under autocast (no nn.Linear left), and the
    backbone's outputs equal those of autocast's per-layer casts exactly, its gradients to bf16 GEMM noise.

    The gradients are exact on some CPUs only: the grouped weights are views at other offsets of one buffer, and
    oneDNN's bf16 GEMM (e.g. on the H200 host's Xeon) picks its kernel by operand alignment, so a backward GEMM may
    sum in another order (the session-3 code failed an exact check there too, 2026-11-21)."""
    import contextlib

    import backbones.base as base
    from backbones.base import MODELS
    torch.manual_seed(0)
    model = MODELS.build(dict(cfg, drop_path_rate=0.0))
    assert not [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    x = torch.randn(1, 3, 40, 48)

    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
        sum(o.float().sum() for o in outs).backward()
        return outs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    seen = []
    real = base.cast_linear_weights

    @contextlib.contextmanager
    def spy(module, enabled=True):
        with real(module, enabled) as r:
            seen.append(sum(m._low is not None for m in module.modules() if isinstance(m, (Linear, Conv2d))))
            yield r
    monkeypatch.setattr(base, 'cast_linear_weights', spy)
    outs, grads = run()
    assert seen and seen[0] == sum(isinstance(m, (Linear, Conv2d)) for m in model.modules()) > 0
    # depthwise convs inside blocks (BiFormer's pos-embed and LCE) are cast with the Linears
    assert not [n for n, m in model.named_modules() if type(m) is torch.nn.Conv2d and m.groups > 1]
    monkeypatch.setattr(base, 'cast_linear_weights', lambda module, enabled=True: contextlib.nullcontext())
    outs_ref, grads_ref = run()
    for o, r in zip(outs, outs_ref):
        torch.testing.assert_close(o, r, atol=0, rtol=0)
    assert grads.keys() == grads_ref.keys()
    for n in grads:
        scale = grads_ref[n].abs().max().item()
        torch.testing.assert_close(grads[n], grads_ref[n], atol=2e-2 * scale, rtol=2e-2, msg=n)


def test_grouped_cast_leaves_frozen_layers_out_of_autograd():
    """With frozen stages the frozen Linears get their low-precision weights outside autograd (no weight gradient
    is computed for them), the trainable ones through the one cast node; gradients as with per-layer casts."""
    import contextlib

    import backbones.base as base
    from backbones.base import MODELS
    torch.manual_seed(0)
    model = MODELS.build(dict(type='HWT', arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2], window_size=3,
                                                     mlp_ratio=2), out_indices=(0, 1), frozen_stages=1,
                              drop_path_rate=0.0))
    frozen = {m for m in model.layers[0].modules() if isinstance(m, Linear)}
    assert frozen and all(not p.requires_grad for m in frozen for p in m.parameters())
    x = torch.randn(1, 3, 24, 32)
    seen = {}

    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
        sum(o.float().sum() for o in outs).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    real = base.cast_linear_weights

    @contextlib.contextmanager
    def spy(module, enabled=True):
        with real(module, enabled) as r:
            seen.update({m: m._low[0].requires_grad for m in module.modules() if isinstance(m, Linear)})
            yield r
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, 'cast_linear_weights', spy)
        grads = run()
    assert seen and all(seen[m] is (m not in frozen) for m in seen)
    assert not any(n.startswith('layers.0.') for n in grads)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, 'cast_linear_weights', lambda module, enabled=True: contextlib.nullcontext())
        grads_ref = run()
    assert grads.keys() == grads_ref.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], grads_ref[n], atol=2e-2 * grads_ref[n].abs().max().item(), rtol=2e-2)


@pytest.mark.parametrize('strided', [False, True, 'nchw'], ids=['pos_embed', 'lce_on_v_slice', 'nchw_memory'])
def test_biformer_conv_add_kernel_path_equals_the_module_composition(strided):
    """``conv_add`` on the fused depthwise op (forced 'triton' as the ``backend`` argument: the interpreter on CPU)
    equals ``residual + conv(x)`` through the module in values and in the gradients of x, residual, weight and bias
    (fp32)."""
    import os

    from backbones.layers.biformer_blocks import conv_add
    from backbones.layers.linear import Conv2d
    if os.environ.get('TRITON_INTERPRET') != '1' and not torch.cuda.is_available():
        pytest.skip('needs TRITON_INTERPRET=1 or CUDA')
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    c, k = 12, 5 if strided is True else 3
    conv = Conv2d(c, c, k, padding=k // 2, groups=c).to(dev)
    base = torch.randn(2, 7, 9, 3 * c if strided is True else c, device=dev, requires_grad=True)
    res = torch.randn(2, 7, 9, c, device=dev, requires_grad=True)
    outs, grads = [], []
    if strided == 'nchw':   # a stage's first block: the downsampler's NCHW map seen channels-last
        base = torch.randn(2, c, 7, 9, device=dev, requires_grad=True)
    for backend in ('triton', 'torch'):
        x = base.permute(0, 2, 3, 1) if strided == 'nchw' else base[..., 2 * c:] if strided is True else base
        out = conv_add(conv, x, res, backend)
        # the strided-channel (NCHW memory) map always takes the module; else 'triton' is the Triton op's node
        assert ('DepthwiseConv2d' in type(out.grad_fn).__name__) == (backend == 'triton' and strided != 'nchw')
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), device=dev).view_as(out)).sum(),
                                         (base, res, conv.weight, conv.bias)))
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_init_linear_and_norm():
    """Linear weights: PyTorch's truncated normal (std 0.02), zero bias; LayerNorm 1 / 0; other modules untouched."""
    from backbones.layers.init import init_linear_and_norm
    lin, norm, conv = torch.nn.Linear(512, 1024), torch.nn.LayerNorm(24), torch.nn.Conv2d(3, 4, 3)
    norm.weight.data.fill_(3.0)
    norm.bias.data.fill_(3.0)
    conv_before = conv.weight.detach().clone()
    torch.manual_seed(7)
    for module in (lin, norm, conv):
        init_linear_and_norm(module)
    torch.manual_seed(7)
    torch.testing.assert_close(lin.weight.detach(), torch.nn.init.trunc_normal_(torch.empty(1024, 512), std=0.02),
                               rtol=0, atol=0)
    assert abs(lin.weight.std().item() - 0.02) < 2e-4
    assert not lin.bias.any()
    assert torch.equal(norm.weight.detach(), torch.ones(24)) and not norm.bias.any()
    assert torch.equal(conv.weight.detach(), conv_before)
