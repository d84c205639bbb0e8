"""NAT, DiNAT and HNT backbones: presets (published sizes), NATTEN semantics of the attention modules, output shapes
at odd sizes, dilation clipping, Hilbert reordering once per stage, freezing, gradients, checkpointing, registry."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

import backbones.layers.nat_blocks as nat_blocks
from backbones.dinat import DILATION_SCHEDULES, DINAT_ARCHS, DiNAT, dilation_schedule
from backbones.hnt import HNT, HNT_ARCHS
from backbones.layers.nat_blocks import HilbertNeighborhoodAttention1d, NeighborhoodAttention2d, clip_dilation
from backbones.nat import NAT, NAT_ARCHS
from _checks import assert_checkpointed_equals_plain

TYPES = {'NAT': (NAT, NAT_ARCHS), 'DiNAT': (DiNAT, DINAT_ARCHS), 'HNT': (HNT, HNT_ARCHS)}
PRESET_CASES = [(t, a) for t, (_, archs) in TYPES.items() for a in archs]
TINY = {
    'NAT': dict(depths=(1, 1, 2, 1), embed_dims=8, num_heads=(1, 2, 2, 4), mlp_ratio=2.0, kernel_size=7),
    'DiNAT': dict(depths=(2, 2, 2, 2), embed_dims=8, num_heads=(1, 2, 2, 4), mlp_ratio=2.0, kernel_size=7,
                  layer_scale=1e-5),
    'HNT': dict(depths=(1, 1, 2, 1), embed_dims=8, num_heads=(1, 2, 2, 4), mlp_ratio=2.0, kernel_size=49),
}
# published parameter counts (M, ImageNet classifier incl. 1000-class head): NAT.md / DiNAT.md of the official repo
PUBLISHED_M = {'mini': 20, 'tiny': 28, 'small': 51, 'base': 90}


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Small CPU shapes run ~50x faster on one intra-op thread than on two oversubscribed ones (shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(kind, arch, **kwargs):
    cls, _ = TYPES[kind]
    if kind == 'DiNAT':
        kwargs.setdefault('dilations', 'coco')
    return cls(arch=arch, **kwargs)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def expected_params(arch, rpb_1d=False, out_indices=(0, 1, 2, 3)):
    """Hand count of the NAT skeleton (official layout), without classifier."""
    c, k = arch['embed_dims'], arch['kernel_size']
    total = (3 * 9 * c // 2 + c // 2) + (c // 2 * 9 * c + c) + 2 * c  # two convs + norm
    for i, (depth, heads) in enumerate(zip(arch['depths'], arch['num_heads'])):
        d, hidden = c * 2 ** i, int(c * 2 ** i * arch['mlp_ratio'])
        rpb = heads * (2 * k - 1) if rpb_1d else heads * (2 * k - 1) ** 2
        block = 4 * d + (3 * d * d + 3 * d) + rpb + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
        block += 2 * d if arch.get('layer_scale') else 0
        total += depth * block
        total += (9 * d * 2 * d + 4 * d) if i < 3 else 0  # conv downsampler + norm
        total += 2 * d if i in out_indices else 0
    return total


def stage_sizes(h, w):
    sizes = []
    for i in range(4):
        h, w = math.ceil(h / (4 if i == 0 else 2)), math.ceil(w / (4 if i == 0 else 2))
        sizes.append((h, w))
    return sizes


# ---------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def meta_device(monkeypatch):
    """Build on the meta device (no memory, no init cost: NAT-B has 89M parameters). The drop-path schedule is a
    Python list computed with torch.linspace(...).tolist(), which needs real data, so it runs on the CPU."""
    import backbones.nat as nat_module
    real = nat_module.drop_path_schedule

    def on_cpu(rate, depths):
        with torch.device('cpu'):
            return real(rate, depths)

    with monkeypatch.context() as patch:
        patch.setattr(nat_module, 'drop_path_schedule', on_cpu)
        with torch.device('meta'):
            yield


@pytest.fixture
def on_meta(monkeypatch):
    with meta_device(monkeypatch):
        yield


def build_fast(monkeypatch, kind, arch, **kwargs):
    """A real CPU model without the cost of the official init: meta build, then small random weights."""
    with meta_device(monkeypatch):
        model = build(kind, arch, **kwargs)
    model.to_empty(device='cpu')
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.LayerNorm):
                    p.fill_(1.0 if name == 'weight' else 0.0)
                else:
                    p.normal_(0.0, 0.02, generator=g)
    return model


@pytest.mark.parametrize('kind,arch', PRESET_CASES, ids=[f'{t}-{a}' for t, a in PRESET_CASES])
def test_preset_structure_and_size(kind, arch, on_meta):
    model = build(kind, arch, out_indices=(3,))
    preset = TYPES[kind][1][arch]
    assert n_params(model) == expected_params(preset, rpb_1d=kind == 'HNT', out_indices=(3,))
    assert [len(stage.blocks) for stage in model.levels] == list(preset['depths'])
    assert [stage.blocks[0].attn.num_heads for stage in model.levels] == list(preset['num_heads'])
    assert {b.attn.kernel_size for s in model.levels for b in s.blocks} == {preset['kernel_size']}
    assert model.num_features == tuple(preset['embed_dims'] * 2 ** i for i in range(4))
    assert model.drop_path_rate == preset['drop_path_rate']
    assert model.levels[3].downsample is None and all(model.levels[i].downsample is not None for i in range(3))
    has_ls = preset['layer_scale'] is not None
    assert (model.levels[0].blocks[0].gamma1 is not None) == has_ls
    # the ImageNet classifier = our backbone with out_indices=(3,) (norm3 == the final norm) + the 1000-class head
    classifier = n_params(model) + model.num_features[3] * 1000 + 1000
    if kind != 'HNT':
        assert round(classifier / 1e6) == PUBLISHED_M[arch]
    rpb = model.levels[0].blocks[0].attn.rpb
    heads0 = preset['num_heads'][0]
    assert tuple(rpb.shape) == ((heads0, 97) if kind == 'HNT' else (heads0, 13, 13))


def test_preset_values_from_the_official_code():
    # classification/nat.py: nat_mini / nat_tiny / nat_small / nat_base
    assert NAT_ARCHS['mini'] == dict(depths=(3, 4, 6, 5), embed_dims=64, num_heads=(2, 4, 8, 16), mlp_ratio=3.0,
                                     kernel_size=7, layer_scale=None, drop_path_rate=0.2)
    assert NAT_ARCHS['small']['layer_scale'] == 1e-5 and NAT_ARCHS['base']['layer_scale'] == 1e-5
    assert [NAT_ARCHS[a]['drop_path_rate'] for a in ('mini', 'tiny', 'small', 'base')] == [0.2, 0.2, 0.3, 0.5]
    # classification/dinat.py: dinat_small has no layer scale, dinat_base has 1e-5
    assert DINAT_ARCHS['small']['layer_scale'] is None and DINAT_ARCHS['base']['layer_scale'] == 1e-5
    assert all(HNT_ARCHS[a]['kernel_size'] == 49 for a in HNT_ARCHS)


@pytest.mark.parametrize('kind', sorted(TYPES))
def test_mini_preset_forward(kind, monkeypatch):
    # the mini presets run at 32 x 40 (stage 3 is 1 x 2); the bigger presets share every code path with the tiny
    # arch dicts below (layer scale included), so they are only built on the meta device above
    model = build_fast(monkeypatch, kind, 'mini', out_indices=(0, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 40))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 10), (1, 512, 1, 2)]


# ---------------------------------------------------------------------------------------------------------------
# DiNAT dilation schedules (official configs) and clipping
# ---------------------------------------------------------------------------------------------------------------
OFFICIAL_DILATIONS = {  # detection/configs/dinat/*.py, segmentation/configs/dinat/*.py, classification/dinat.py
    ('coco', 'mini'): [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]],
    ('coco', 'tiny'): [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7],
                       [1, 3, 1, 3, 1]],
    ('ade20k', 'mini'): [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4], [1, 2, 1, 2, 1]],
    ('ade20k', 'base'): [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4],
                         [1, 2, 1, 2, 1]],
    ('imagenet', 'small'): [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1, 1, 1, 1, 1]],
}


@pytest.mark.parametrize('schedule,arch', sorted(OFFICIAL_DILATIONS), ids=lambda v: str(v))
def test_dilation_schedules_match_official_configs(schedule, arch):
    expected = OFFICIAL_DILATIONS[(schedule, arch)]
    assert [list(s) for s in dilation_schedule(schedule, DINAT_ARCHS[arch]['depths'])] == expected
    model = DiNAT(arch=dict(DINAT_ARCHS[arch], embed_dims=8, num_heads=(1, 1, 1, 1)), dilations=schedule)
    assert [[b.attn.dilation for b in stage.blocks] for stage in model.levels] == expected


def test_explicit_dilations_and_errors():
    explicit = [[1, 2], [1, 3], [2, 1], [1, 1]]
    model = DiNAT(arch=TINY['DiNAT'], dilations=explicit)
    assert [[b.attn.dilation for b in s.blocks] for s in model.levels] == explicit
    with pytest.raises(KeyError, match='coco'):
        DiNAT(arch=TINY['DiNAT'], dilations='cityscapes')
    with pytest.raises(ValueError, match='2 ints'):
        DiNAT(arch=TINY['DiNAT'], dilations=[[1], [1, 3], [2, 1], [1, 1]])
    with pytest.raises(ValueError, match='positive'):
        DiNAT(arch=TINY['DiNAT'], dilations=[[1, 0], [1, 3], [2, 1], [1, 1]])
    assert set(DILATION_SCHEDULES) == {'imagenet', 'coco', 'ade20k'}


@pytest.mark.parametrize('d,k,h,w,expected', [(28, 7, 200, 336, 28), (28, 7, 100, 336, 14), (28, 7, 6, 9, 1),
                                              (16, 7, 128, 128, 16), (8, 7, 1, 1, 1), (3, 7, 21, 20, 2)])
def test_clip_dilation(d, k, h, w, expected):
    assert clip_dilation(d, k, h, w) == expected


def test_dinat_uses_clipped_dilation(monkeypatch):
    calls = []
    real = nat_blocks.sparse_ops.qkv_attention

    def spy(qkv, num_heads, pattern, kernel_size, dilation=1, **kwargs):
        assert pattern == 'na2d'
        calls.append((qkv.shape[1], qkv.shape[2], dilation))
        return real(qkv, num_heads, pattern, kernel_size, dilation=dilation, **kwargs)

    monkeypatch.setattr(nat_blocks.sparse_ops, 'qkv_attention', spy)
    model = DiNAT(arch=TINY['DiNAT'], dilations=[[1, 28], [1, 14], [1, 7], [1, 3]], out_indices=(3,)).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 120, 64))  # stages 30x16, 15x8, 8x4, 4x2
    assert calls == [(30, 16, 1), (30, 16, 2), (15, 8, 1), (15, 8, 1), (8, 4, 1), (8, 4, 1), (4, 2, 1), (4, 2, 1)]


# ---------------------------------------------------------------------------------------------------------------
# attention modules follow NATTEN (checked against a naive transcription of NATTEN 0.14's window / bias indexing)
# ---------------------------------------------------------------------------------------------------------------
def natten_window_start(i, length, k, d):
    ns = k // 2
    if d <= 1:
        return max(i - ns, 0) + (i + ns >= length) * (length - i - ns - 1)
    if i - ns * d < 0:
        return i % d
    if i + ns * d >= length:
        a = length // d * d
        return length - (length - a) + i % d - 2 * ns * d if i % d < length - a else a + i % d - k * d
    return i - ns * d


def natten_pb_start(i, length, k, d):
    ns = k // 2
    if d <= 1:
        return ns + (i < ns) * (ns - i) + (i + ns >= length) * (length - i - 1 - ns)
    if i - ns * d < 0:
        return k - 1 - i // d
    if i + ns * d >= length:
        return (length - i - 1) // d
    return ns


def natten_axis(length, k, d):
    keys = torch.tensor([[natten_window_start(i, length, k, d) + j * d for j in range(k)] for i in range(length)])
    bias = torch.tensor([[natten_pb_start(i, length, k, d) + j for j in range(k)] for i in range(length)])
    return keys, bias


def natten_na2d(x, qkv, rpb, proj, heads, k, d):
    """NATTEN ``NeighborhoodAttention2D.forward`` (unfused path) written out with explicit index tables."""
    b, h, w, c = x.shape
    q, kk, v = qkv(x).reshape(b, h, w, 3, heads, c // heads).permute(3, 0, 4, 1, 2, 5)
    q = q * (c // heads) ** -0.5
    ky, by = natten_axis(h, k, d)
    kx, bx = natten_axis(w, k, d)
    keys = kk[:, :, ky[:, :, None, None], kx[None, None, :, :]]          # (B, heads, H, k, W, k, D)
    vals = v[:, :, ky[:, :, None, None], kx[None, None, :, :]]
    logits = torch.einsum('bnywc,bnyiwjc->bnywij', q, keys)
    logits = logits + rpb[:, by[:, None, :, None], bx[None, :, None, :]][None]  # (heads, H, W, k, k)
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    out = torch.einsum('bnywij,bnyiwjc->bnywc', attn, vals)
    return proj(out.permute(0, 2, 3, 1, 4).reshape(b, h, w, c))


@pytest.mark.parametrize('h,w,k,d', [(9, 11, 3, 1), (7, 7, 7, 1), (14, 17, 3, 2), (15, 16, 5, 3)],
                         ids=lambda v: str(v))
def test_na2d_module_matches_natten(h, w, k, d):
    torch.manual_seed(0)
    attn = NeighborhoodAttention2d(12, 3, kernel_size=k, dilation=d).double()
    nat_blocks.init_nat_weights(attn)
    with torch.no_grad():
        attn.rpb.normal_()
    x = torch.randn(2, h, w, 12, dtype=torch.float64)
    assert attn.effective_dilation(h, w) == d
    torch.testing.assert_close(attn(x), natten_na2d(x, attn.qkv, attn.rpb, attn.proj, 3, k, d))


@pytest.mark.parametrize('n,k', [(50, 9), (37, 49), (3, 5)])
def test_hilbert_na1d_module_matches_natten_1d(n, k):
    # NATTEN 0.14 NeighborhoodAttention1D on the (already Hilbert-ordered) sequence: window and rpb[h, j - i + K - 1]
    torch.manual_seed(0)
    attn = HilbertNeighborhoodAttention1d(12, 3, kernel_size=k).double()
    with torch.no_grad():
        attn.rpb.normal_()
    x = torch.randn(2, n, 12, dtype=torch.float64)
    q, kk, v = attn.qkv(x).reshape(2, n, 3, 3, 4).permute(2, 0, 3, 1, 4)
    logits = torch.einsum('bhid,bhjd->bhij', q * 4 ** -0.5, kk)
    size = min(k, n)
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    start = (i - k // 2).clamp(0, n - size)
    allowed = (j >= start) & (j < start + size)
    bias = attn.rpb[:, (j - i).clamp(-(k - 1), k - 1) + k - 1]
    logits = (logits + bias).masked_fill(~allowed, float('-inf'))
    ref = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, n, 12))
    torch.testing.assert_close(attn(x, (1, n)), ref)
    torch.testing.assert_close(attn(x, (n, 1)), ref)  # hw only places tokens; the bias depends on i - j


# ---------------------------------------------------------------------------------------------------------------
# shapes at odd sizes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', sorted(TYPES))
@pytest.mark.parametrize('hw', [(64, 64), (112, 137), (1, 1), (32, 7)], ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_output_shapes(kind, hw):
    model = build(kind, TINY[kind]).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *hw))
    assert [tuple(o.shape) for o in outs] == [(2, 8 * 2 ** i, *s) for i, s in enumerate(stage_sizes(*hw))]
    assert all(o.is_contiguous() and torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('kind', sorted(TYPES))
def test_output_shapes_511(kind):
    arch = dict(TINY[kind], depths=(1, 1, 1, 1), embed_dims=4, num_heads=(1, 1, 1, 1))
    model = build(kind, arch, out_indices=(0, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 511, 511))
    assert [tuple(o.shape) for o in outs] == [(1, 4, 128, 128), (1, 16, 32, 32), (1, 32, 16, 16)]


def test_out_indices_subset_norms_and_early_exit():
    model = NAT(arch=TINY['NAT'], out_indices=(-1, 1))
    assert model.out_indices == (1, 3)
    model = NAT(arch=TINY['NAT'], out_indices=(0, 2))
    assert hasattr(model, 'norm0') and hasattr(model, 'norm2') and not hasattr(model, 'norm3')
    outs = model(torch.randn(1, 3, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 8, 12), (1, 32, 2, 3)]
    outs[1].sum().backward()
    assert all(p.grad is None for p in model.levels[3].parameters())  # stage 3 never ran
    assert all(p.grad is None for p in model.levels[2].downsample.parameters())


# ---------------------------------------------------------------------------------------------------------------
# HNT: Hilbert order once per stage
# ---------------------------------------------------------------------------------------------------------------
def test_hnt_reorders_once_per_stage(monkeypatch):
    import backbones.hnt as hnt
    calls = {'to': 0, 'from': 0}
    to_h, from_h = hnt.to_hilbert, hnt.from_hilbert

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(hnt, 'to_hilbert', count('to', to_h))
    monkeypatch.setattr(hnt, 'from_hilbert', count('from', from_h))
    model = HNT(arch=dict(TINY['HNT'], depths=(2, 3, 2, 2))).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 40, 24))
    assert calls == {'to': 4, 'from': 4}


def test_hnt_feeds_blocks_the_hilbert_sequence():
    import sparse_ops
    model = HNT(arch=dict(TINY['HNT'], depths=(1, 1, 1, 1)), out_indices=(0,)).eval()
    seen = []
    attn = model.levels[0].blocks[0].attn

    def spy(qkv, hw):       # the attention core between attn.qkv and attn.proj
        seen.append((qkv.clone(), hw))
        return torch.zeros_like(qkv[..., :qkv.shape[-1] // 3])

    attn.attend = spy
    img = torch.randn(1, 3, 44, 24)
    with torch.no_grad():
        model(img)
        grid = model.levels[0].blocks[0].norm1(model.patch_embed(img))  # (1, 11, 6, 8)
        want = attn.qkv(grid.reshape(1, 66, 8)[:, sparse_ops.hilbert_order(11, 6)])
    qkv, hw = seen[0]
    assert hw == (11, 6)
    torch.testing.assert_close(qkv, want)


def test_hnt_attention_only_sees_curve_neighbours():
    # kernel 3: token t sees t-1, t, t+1 of the curve, not an image 4-neighbour that lies far along the curve
    import sparse_ops
    attn = HilbertNeighborhoodAttention1d(8, 2, kernel_size=3)
    order = sparse_ops.hilbert_order(8, 8).tolist()
    pos = {p: i for i, p in enumerate(order)}
    t, neighbour = next((t, q) for t in range(1, 63) for q in (order[t] - 8, order[t] + 8)
                        if 0 <= q < 64 and abs(pos[q] - t) > 1)
    seq = torch.randn(1, 64, 8)
    base = attn(seq, (8, 8))
    for target, should_change in ((t + 1, True), (t - 1, True), (pos[neighbour], False)):
        moved = seq.clone()
        moved[:, target] += 3.0
        assert (not torch.allclose(attn(moved, (8, 8))[:, t], base[:, t])) == should_change


# ---------------------------------------------------------------------------------------------------------------
# training machinery
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', sorted(TYPES))
def test_frozen_stages(kind):
    model = build(kind, TINY[kind], frozen_stages=2)
    model.train()
    for module in (model.patch_embed, model.levels[0], model.levels[1], model.norm0, model.norm1):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(('levels.2.', 'levels.3.', 'norm2.', 'norm3.')) for n in trainable)
    assert model.levels[2].training
    model = build(kind, TINY[kind], frozen_stages=0)
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert all(p.requires_grad for p in model.levels.parameters())


@pytest.mark.parametrize('kind', sorted(TYPES))
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(0)
    model = build(kind, TINY[kind], drop_path_rate=0.0).train()
    outs = model(torch.randn(2, 3, 40, 56))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize('kind', sorted(TYPES))
def test_with_cp_matches_plain(kind):
    torch.manual_seed(0)
    plain = build(kind, TINY[kind], drop_path_rate=0.0)
    cp = build(kind, TINY[kind], drop_path_rate=0.0, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 36, 44)
    assert_checkpointed_equals_plain(plain, cp, x)


def test_drop_path_schedule_and_override(monkeypatch):
    with meta_device(monkeypatch):
        model = NAT(arch='mini')
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.0
             for s in model.levels for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and len(rates) == 18
    model = NAT(arch=TINY['NAT'], drop_path_rate=0.35)
    assert model.levels[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.35)
    assert NAT(arch=TINY['NAT']).drop_path_rate == 0.0  # dict arch without drop_path_rate


def test_layer_scale_init_and_rpb_init():
    model = NAT(arch=dict(TINY['NAT'], layer_scale=1e-5))
    block = model.levels[1].blocks[0]
    torch.testing.assert_close(block.gamma1.data, torch.full((16,), 1e-5))
    assert 0.015 < block.attn.rpb.std() < 0.025  # NATTEN: trunc_normal_(std=0.02)


@pytest.mark.parametrize('kind', sorted(TYPES))
def test_init_cfg_pretrained_round_trip(kind, tmp_path):
    source = build(kind, TINY[kind])
    path = tmp_path / 'own.pth'
    torch.save({'state_dict': source.state_dict()}, path)
    target = build(kind, TINY[kind], init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    target.init_weights()
    for (name, p1), p2 in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(p2, p1, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch,err,match', [
    ('huge', KeyError, 'tiny'),
    (dict(embed_dims=8, depths=(1, 1, 1, 1)), ValueError, 'num_heads'),
    (dict(TINY['NAT'], num_heads=(3, 2, 2, 4)), ValueError, 'divisible'),
    (dict(TINY['NAT'], depths=(1, 1, 1)), ValueError, '4 ints'),
    (dict(TINY['NAT'], kernel_size=6), ValueError, 'odd'),
    (dict(TINY['NAT'], embed_dims=7), ValueError, 'even'),
    (dict(TINY['NAT'], layer_scale=-1.0), ValueError, 'layer_scale'),
    (dict(TINY['NAT'], kernelsize=7), ValueError, 'unknown keys'),
])
def test_bad_arch(arch, err, match):
    with pytest.raises(err, match=match):
        NAT(arch=arch)


def test_hnt_presets_are_only_mini_tiny():
    with pytest.raises(KeyError, match='mini'):
        HNT(arch='small')


@pytest.mark.parametrize('kwargs,match', [(dict(out_indices=(4,)), 'out of range'), (dict(frozen_stages=5), 'frozen'),
                                          (dict(drop_path_rate=1.0), 'drop_path_rate')])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NAT(arch=TINY['NAT'], **kwargs)


@pytest.mark.parametrize('x,match', [(torch.zeros(1, 1, 32, 32), 'channels'),
                                     (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 'floating'),
                                     (torch.zeros(3, 32, 32), '4D')])
def test_bad_input(x, match):
    for kind in TYPES:
        with pytest.raises(ValueError, match=match):
            build(kind, TINY[kind])(x)


def test_in_channels():
    model = HNT(arch=TINY['HNT'], in_channels=1, out_indices=(0,))
    assert model(torch.randn(1, 1, 16, 16))[0].shape == (1, 8, 4, 4)


# ---------------------------------------------------------------------------------------------------------------
# registry: stock mmdet / mmseg configs
# ---------------------------------------------------------------------------------------------------------------
def _build_from_stock(tmp_path, scope, base, body):
    pytest.importorskip(scope)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg_file = tmp_path / f'{scope}_nat_family.py'
    cfg_file.write_text(f"_base_ = ['{base}']\n"
                        "custom_imports = dict(imports=['backbones.nat', 'backbones.dinat', 'backbones.hnt'], "
                        "allow_failed_imports=False)\n" + body)
    cfg = Config.fromfile(str(cfg_file))
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return registry.build(cfg.model).eval()


TINY_CFG = "arch=dict(depths=[1, 1, 2, 1], embed_dims=16, num_heads=[1, 2, 2, 4], mlp_ratio=2.0)"


@pytest.mark.parametrize('kind,extra', [('NAT', ''), ('DiNAT', ", dilations='coco'"), ('HNT', '')])
def test_builds_in_stock_mmdet_mask_rcnn(tmp_path, kind, extra):
    model = _build_from_stock(tmp_path, 'mmdet', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', (
        f"model = dict(backbone=dict(_delete_=True, type='{kind}', {TINY_CFG}{extra}, drop_path_rate=0.2),\n"
        "             neck=dict(in_channels=[16, 32, 64, 128]))\n"))
    assert type(model.backbone).__name__ == kind
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 130))
    assert [tuple(f.shape[-2:]) for f in feats][:4] == stage_sizes(96, 130)


@pytest.mark.parametrize('kind,extra', [('NAT', ''), ('DiNAT', ", dilations='ade20k'"), ('HNT', '')])
def test_builds_in_stock_mmseg_upernet(tmp_path, kind, extra):
    model = _build_from_stock(tmp_path, 'mmseg', 'mmseg::_base_/models/upernet_r50.py', (
        "norm_cfg = dict(type='BN', requires_grad=True)\n"
        # the stock model sets pretrained='open-mmlab://resnet50_v1c', which EncoderDecoder hands to the backbone
        f"model = dict(pretrained=None, backbone=dict(_delete_=True, type='{kind}', {TINY_CFG}{extra}),\n"
        "             decode_head=dict(in_channels=[16, 32, 64, 128], norm_cfg=norm_cfg, num_classes=150),\n"
        "             auxiliary_head=dict(in_channels=64, norm_cfg=norm_cfg, num_classes=150))\n"))
    assert type(model.backbone).__name__ == kind
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 70, 90))
    assert [tuple(f.shape[-2:]) for f in feats] == stage_sizes(70, 90)
