"""BiFormer backbone: presets, shapes at odd sizes, freezing, gradients, equality with the official math.

``_Official*`` below is a test-only re-implementation of the official model (rayleizhu/BiFormer ``models/biformer.py``,
``ops/bra_legacy.py``, ``models/_common.py``, ``models_mm/biformer_mm.py``) with the official parameter names and the
official algorithm (regions by reshape, gathered top-k K/V), valid where every map side is divisible by ``n_win``.
``_masked_routing_reference`` is a dense, masked version of our padding-free semantics for any size.
"""
from __future__ import annotations

import functools
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparse_ops
from backbones.biformer import ARCH_PRESETS, BiFormer
from backbones.converters.biformer import convert
from backbones.layers.biformer_blocks import BiLevelRoutingAttention

SMALL = dict(depths=[1, 1, 2, 1], embed_dims=[32, 64, 64, 64])  # head_dim 32, global heads 8


@functools.lru_cache(maxsize=None)
def _preset(arch: str) -> BiFormer:
    """A preset model in eval mode (n_win 8, the ADE20K setting), built once for this file; do not mutate.
    PyTorch's default init instead of the (slow, trunc-normal) official one: only shapes and counts are tested."""
    with mock.patch('backbones.biformer.init_linear_and_norm', lambda module: None):
        return BiFormer(arch, n_win=8).eval()


@functools.lru_cache(maxsize=None)
def _small(out_indices: tuple) -> BiFormer:
    """The SMALL arch in eval mode, built once per ``out_indices`` for this file; do not mutate."""
    return BiFormer(SMALL, out_indices=out_indices, n_win=8).eval()


@pytest.fixture(autouse=True)
def _strict_numerics():
    torch.manual_seed(0)
    yield


def _stage_sizes(h: int, w: int) -> list[tuple[int, int]]:
    sizes, h, w = [], math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
    for _ in range(4):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


# ---------------------------------------------------------------------------------------------------------------
# test-only official model (names and math of the official code)
# ---------------------------------------------------------------------------------------------------------------
class _OfficialQKV(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)


class _OfficialBRA(nn.Module):
    """ops/bra_legacy.py BiLevelRoutingAttention, identity kv-downsampling, qk_dim = dim, no auto_pad."""

    def __init__(self, c, heads, n_win, topk):
        super().__init__()
        self.heads, self.n_win, self.topk, self.scale = heads, n_win, topk, c ** -0.5
        self.lepe = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.qkv = _OfficialQKV(c)
        self.wo = nn.Linear(c, c)

    def forward(self, x):  # (N, H, W, C), H and W divisible by n_win
        n, h, w, c = x.shape
        s, m = self.n_win, self.heads
        rh, rw, p2, hd = h // s, w // s, s * s, c // m
        xr = x.reshape(n, s, rh, s, rw, c).permute(0, 1, 3, 2, 4, 5).reshape(n, p2, rh, rw, c)
        q, k, v = self.qkv.qkv(xr).split(c, dim=-1)  # (n, p2, rh, rw, c) each
        q_win, k_win = q.mean((2, 3)).detach(), k.mean((2, 3)).detach()
        idx = ((q_win * self.scale) @ k_win.transpose(-1, -2)).topk(self.topk, dim=-1).indices  # (n, p2, topk)
        kv = torch.cat([k, v], -1).reshape(n, 1, p2, rh * rw, 2 * c).expand(-1, p2, -1, -1, -1)
        sel = torch.gather(kv, 2, idx.reshape(n, p2, self.topk, 1, 1).expand(-1, -1, -1, rh * rw, 2 * c))
        k_sel, v_sel = sel.split(c, dim=-1)  # (n, p2, topk, w2, c)
        k_sel = k_sel.reshape(n * p2, self.topk * rh * rw, m, hd).permute(0, 2, 3, 1)
        v_sel = v_sel.reshape(n * p2, self.topk * rh * rw, m, hd).permute(0, 2, 1, 3)
        q_pix = q.reshape(n * p2, rh * rw, m, hd).permute(0, 2, 1, 3)
        out = torch.softmax((q_pix * self.scale) @ k_sel, dim=-1) @ v_sel  # (n p2, m, w2, hd)
        out = out.reshape(n, s, s, m, rh, rw, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(n, h, w, c)
        v_map = v.reshape(n, s, s, rh, rw, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)
        return self.wo(out + self.lepe(v_map).permute(0, 2, 3, 1))


class _OfficialAttentionLePE(nn.Module):
    """models/_common.py AttentionLePE(dim, side_dwconv=5): 8 heads, qkv_bias=False, LePE on the input x."""

    def __init__(self, c, heads=8):
        super().__init__()
        self.heads, self.scale = heads, (c // heads) ** -0.5
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.proj = nn.Linear(c, c)
        self.lepe = nn.Conv2d(c, c, 5, padding=2, groups=c)

    def forward(self, x):
        n, h, w, c = x.shape
        q, k, v = self.qkv(x.reshape(n, h * w, c)).reshape(n, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = (torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1) @ v).transpose(1, 2).reshape(n, h * w, c)
        out = out + self.lepe(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return self.proj(out).reshape(n, h, w, c)


class _OfficialBlock(nn.Module):
    def __init__(self, c, n_win, topk):
        super().__init__()
        self.pos_embed = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm1 = nn.LayerNorm(c, eps=1e-6)
        self.attn = _OfficialBRA(c, c // 32, n_win, topk) if topk > 0 else _OfficialAttentionLePE(c)
        self.norm2 = nn.LayerNorm(c, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c, 3 * c), nn.Identity(), nn.GELU(), nn.Linear(3 * c, c))

    def forward(self, x):
        x = (x + self.pos_embed(x)).permute(0, 2, 3, 1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


class _OfficialDense(nn.Module):
    """models_mm/biformer_mm.py BiFormer_mm (eval): stem, downsamplers, stages, extra_norms (LayerNorm2d)."""

    def __init__(self, depths, dims, n_win, topks):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, dims[0] // 2, 3, 2, 1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1),
                                                        nn.BatchNorm2d(dims[i + 1])))
        self.stages = nn.ModuleList([nn.Sequential(*[_OfficialBlock(dims[i], n_win, topks[i]) for _ in range(d)])
                                     for i, d in enumerate(depths)])
        self.extra_norms = nn.ModuleList([nn.LayerNorm(c, eps=1e-6) for c in dims])

    def forward(self, x):
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            outs.append(self.extra_norms[i](x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return tuple(outs)


def _randomise_(module: nn.Module) -> nn.Module:
    """Random values everywhere (incl. BN statistics and norm affines), so no parameter is a no-op."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith('num_batches_tracked'):
                continue
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 if t.ndim > 1 else 0.2)
                        + (1.0 if name.endswith(('norm1.weight', 'norm2.weight')) else 0.0))
    return module


# ---------------------------------------------------------------------------------------------------------------
# test-only dense masked reference of the padding-free routing semantics (any size)
# ---------------------------------------------------------------------------------------------------------------
def _masked_routing_reference(q, k, v, n_win, topk, scale):
    """q, k, v (B, heads, H, W, D) -> (B, heads, H, W, D): regions = bands of ceil(H/n_win) x ceil(W/n_win), means
    over real tokens (heads concatenated), empty regions never routed, dense softmax under the routed mask."""
    b, nh, h, w, d = q.shape
    ry, rx = torch.arange(h) // math.ceil(h / n_win), torch.arange(w) // math.ceil(w / n_win)
    rid = (ry[:, None] * n_win + rx[None, :]).reshape(-1)  # (HW,)
    onehot = F.one_hot(rid, n_win * n_win).to(q.dtype)  # (HW, R)
    counts = onehot.sum(0)

    def region_mean(t):
        t = t.detach().permute(0, 2, 3, 1, 4).reshape(b, h * w, nh * d)
        return (onehot.T @ t) / counts.clamp(min=1)[:, None]

    logits = region_mean(q) @ region_mean(k).transpose(-1, -2)  # (B, R, R)
    logits = logits.masked_fill(counts[None, None, :] == 0, float('-inf'))
    kk = min(topk, int((counts > 0).sum()))
    allowed = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.topk(kk, dim=-1).indices, True)
    mask = allowed[:, rid][:, :, rid]  # (B, HW, HW)
    qf, kf, vf = (t.reshape(b, nh, h * w, d) for t in (q, k, v))
    att = (qf @ kf.transpose(-1, -2)) * scale
    att = att.masked_fill(~mask[:, None], float('-inf')).softmax(-1)
    return (att @ vf).reshape(b, nh, h, w, d)


# ---------------------------------------------------------------------------------------------------------------
# presets and parameter counts
# ---------------------------------------------------------------------------------------------------------------
def test_presets_are_the_official_models():
    common = dict(head_dim=32, mlp_ratio=3, side_dwconv=5, global_heads=8, layer_scale_init_value=None)
    assert ARCH_PRESETS == {
        'tiny': dict(depths=[2, 2, 8, 2], embed_dims=[64, 128, 256, 512], **common),
        'small': dict(depths=[4, 4, 18, 4], embed_dims=[64, 128, 256, 512], **common),
        'base': dict(depths=[4, 4, 18, 4], embed_dims=[96, 192, 384, 768], **common)}
    model = BiFormer(SMALL)
    assert model.n_win == 16 and model.topks == [1, 4, 16, 'global'] and model.out_indices == (0, 1, 2, 3)
    assert model.arch == {**common, **SMALL}


@pytest.mark.parametrize('arch,official_backbone', [('tiny', 13142760), ('small', 25536232), ('base', 56804968)])
def test_parameter_counts_match_official(arch, official_backbone):
    """Official ImageNet model (README: 13.1 / 25.5 / 56.8 M) minus its head and final BN, plus our 4 out norms."""
    model = _preset(arch)
    c = model.embed_dims[-1]
    head_and_norm = c * 1000 + 1000 + 2 * c
    out_norms = sum(2 * d for d in model.embed_dims)
    assert sum(p.numel() for p in model.parameters()) == official_backbone - head_and_norm + out_norms


# ---------------------------------------------------------------------------------------------------------------
# shapes at odd sizes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_presets_output_shapes(arch):
    """64x64 and 32x32 (a 1x1 last stage) through each full preset (odd and large sizes: the SMALL arch below)."""
    model, dims = _preset(arch), ARCH_PRESETS[arch]['embed_dims']
    for hw in [(64, 64), (32, 32)]:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, *hw))
        assert [tuple(o.shape) for o in outs] == [(1, dims[i], *s) for i, s in enumerate(_stage_sizes(*hw))], hw
        assert all(torch.isfinite(o).all() for o in outs)
    assert _stage_sizes(32, 32)[-1] == (1, 1)


@pytest.mark.parametrize('hw', [(64, 64), (112, 137), (511, 511), (1, 1), (3, 17), (32, 32), (33, 40)],
                         ids=lambda hw: f'{hw[0]}x{hw[1]}')
@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (1, 3), (2,)], ids=str)
def test_output_shapes_any_size(hw, out_indices):
    model = _small(out_indices)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    sizes = _stage_sizes(*hw)
    assert [tuple(o.shape) for o in outs] == [(1, SMALL['embed_dims'][i], *sizes[i]) for i in out_indices]
    assert all(torch.isfinite(o).all() for o in outs)


# ---------------------------------------------------------------------------------------------------------------
# equality with the official math (sizes divisible by n_win), conversion of its weights included
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('n_win,topks,hw', [(2, (1, 2, 3, -2), (64, 128)), (4, (1, 4, 16, -2), (128, 128))],
                         ids=['nwin2-64x128', 'nwin4-128x128'])
def test_equals_official_math_with_converted_weights(n_win, topks, hw):
    official = _randomise_(_OfficialDense(SMALL['depths'], SMALL['embed_dims'], n_win, topks)).eval()
    model = BiFormer(SMALL, n_win=n_win, topks=topks, drop_path_rate=0.0).eval()
    model.load_state_dict(convert({'state_dict': {f'backbone.{k}': v for k, v in official.state_dict().items()}}))
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        expected, got = official(x), model(x)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('hw,n_win,topk', [((8, 8), 4, 3), ((9, 11), 4, 3), ((5, 5), 3, 2), ((1, 1), 4, 4),
                                           ((2, 7), 3, 9), ((13, 6), 4, 20)],
                         ids=lambda p: 'x'.join(map(str, p)) if isinstance(p, tuple) else str(p))
def test_routing_attention_has_no_padding_semantics(hw, n_win, topk):
    """Our module = qkv + masked dense reference of the padding-free routing + LCE + proj, at any size."""
    attn = BiLevelRoutingAttention(64, 2, n_win, topk)
    x = torch.randn(2, *hw, 64)
    q, k, v = attn.qkv(x).view(2, *hw, 3, 2, 32).permute(3, 0, 4, 1, 2, 5)
    ref = _masked_routing_reference(q, k, v, n_win, topk, 64 ** -0.5).permute(0, 2, 3, 1, 4).reshape(2, *hw, 64)
    ref = attn.proj(ref + attn.lepe(v.permute(0, 2, 3, 1, 4).reshape(2, *hw, 64).permute(0, 3, 1, 2))
                    .permute(0, 2, 3, 1))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


def test_routing_attention_goes_through_sparse_ops(monkeypatch):
    calls = []
    original = sparse_ops.qkv_attention

    def spy(qkv, num_heads, pattern, *args, **kwargs):
        calls.append((tuple(qkv.shape), num_heads, pattern, args, kwargs['scale']))
        return original(qkv, num_heads, pattern, *args, **kwargs)

    monkeypatch.setattr(sparse_ops, 'qkv_attention', spy)
    model = BiFormer(SMALL, n_win=2, topks=(1, 4, 16, 'global')).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 48))
    assert calls == [((1, 16, 12, 96), 1, 'routing', (2, 1), 32 ** -0.5),
                     ((1, 8, 6, 192), 2, 'routing', (2, 4), 64 ** -0.5),
                     ((1, 4, 3, 192), 2, 'routing', (2, 4), 64 ** -0.5),
                     ((1, 4, 3, 192), 2, 'routing', (2, 4), 64 ** -0.5)]


# ---------------------------------------------------------------------------------------------------------------
# training behaviour
# ---------------------------------------------------------------------------------------------------------------
def test_gradients_reach_every_parameter_and_with_cp_matches():
    x = torch.randn(2, 3, 40, 48)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = BiFormer(SMALL, n_win=2, topks=(1, 2, 3, 'global'), drop_path_rate=0.0, with_cp=with_cp).train()
        _randomise_(model)
        outs = model(x)
        sum((o * torch.randn_like(o)).sum() for o in outs).backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not no_grad, f'parameters without gradient: {no_grad}'
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_autocast_forward_backward():
    model = BiFormer(SMALL, n_win=4, drop_path_rate=0.1).train()
    x = torch.randn(1, 3, 40, 56)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x)
    assert all(torch.isfinite(o.float()).all() for o in outs)
    sum(o.float().mean() for o in outs).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_init_cfg_converted_pretrained(tmp_path):
    """``init_cfg=dict(type='ConvertedPretrained', convert_from='biformer')`` loads an official dense checkpoint."""
    official = _randomise_(_OfficialDense(SMALL['depths'], SMALL['embed_dims'], 2, (1, 2, 3, -2)))
    path = tmp_path / 'biformer_official.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in official.state_dict().items()}}, path)
    model = BiFormer(SMALL, n_win=2, init_cfg=dict(type='ConvertedPretrained', checkpoint=str(path),
                                                   convert_from='biformer'))
    model.init_weights()
    torch.testing.assert_close(model.stages[1][0].attn.proj.weight, official.stages[1][0].attn.wo.weight)
    torch.testing.assert_close(model.stages[2][1].mlp.fc2.bias, official.stages[2][1].mlp[3].bias)
    torch.testing.assert_close(model.norm3.weight, official.extra_norms[3].weight)


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages(frozen_stages):
    model = BiFormer(SMALL, frozen_stages=frozen_stages)
    model.train()

    def stage_of(name):  # -1 for the stem, i for stage i (its downsampler, blocks and output norm)
        part, idx = name.split('.')[:2]
        if part.startswith('norm'):
            return int(part[4:])
        return int(idx) - 1 if part == 'downsample_layers' and idx == '0' else int(idx)

    def frozen(i):
        return 0 <= frozen_stages and i < frozen_stages

    for name, p in model.named_parameters():
        assert p.requires_grad is not frozen(stage_of(name)), name

    assert model.downsample_layers[0].training is not frozen(-1)
    for i in range(4):
        for m in [model.stages[i], getattr(model, f'norm{i}')] + ([model.downsample_layers[i]] if i else []):
            assert m.training is not frozen(i), (i, m)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (trainable == 0) == (frozen_stages == 4)


def test_norm_eval_keeps_batchnorm_in_eval():
    model = BiFormer(SMALL, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 5 and not any(m.training for m in bns)
    assert BiFormer(SMALL, norm_eval=False).train().downsample_layers[0][1].training


def test_sync_bn_norm_cfg():
    model = BiFormer(SMALL, norm_cfg=dict(type='SyncBN', requires_grad=True))
    assert isinstance(model.downsample_layers[2][1], nn.SyncBatchNorm)


# ---------------------------------------------------------------------------------------------------------------
# argument and input checks
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,error', [
    (dict(arch='huge'), KeyError), (dict(arch=dict(depths=[1, 1, 1, 1])), ValueError),
    (dict(arch=dict(depths=[1, 1, 1], embed_dims=[32, 64, 64])), ValueError),
    (dict(arch=dict(depths=[1, 1, 1, 1], embed_dims=[32, 48, 64, 64])), ValueError),
    (dict(arch=dict(SMALL, head_dim=0)), ValueError), (dict(arch=dict(SMALL, mlp_ratio=0)), ValueError),
    (dict(arch=dict(SMALL, side_dwconv=4)), ValueError), (dict(arch=dict(SMALL, qk_dims=[32] * 4)), ValueError),
    (dict(topks=(1, 4, 16)), ValueError), (dict(topks=(0, 4, 16, -2)), ValueError),
    (dict(topks=(1, 4, -1, -2)), ValueError), (dict(topks=(1, 4, 16, 'dense')), ValueError),
    (dict(n_win=0), ValueError), (dict(n_win=2.0), ValueError), (dict(drop_path_rate=1.5), ValueError),
    (dict(attn_backend='cuda'), ValueError), (dict(out_indices=(4,)), ValueError)])
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        BiFormer(**{'arch': SMALL, **kwargs})


@pytest.mark.parametrize('x,match', [(torch.randn(1, 1, 32, 32), 'channels'),
                                     (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 'floating'),
                                     (torch.randn(3, 32, 32), '4D')])
def test_bad_inputs_raise(x, match):
    with pytest.raises(ValueError, match=match):
        BiFormer(SMALL)(x)


# ---------------------------------------------------------------------------------------------------------------
# registry: stock mmdet / mmseg configs
# ---------------------------------------------------------------------------------------------------------------
def _build_from_stock(tmp_path, scope, base, body):
    pytest.importorskip(scope)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg_file = tmp_path / f'{scope}_biformer.py'
    cfg_file.write_text(f"_base_ = ['{base}']\n"
                        "custom_imports = dict(imports=['backbones.biformer'], allow_failed_imports=False)\n" + body)
    cfg = Config.fromfile(str(cfg_file))
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return registry.build(cfg.model).eval()


def test_builds_in_stock_mmdet_mask_rcnn(tmp_path):
    model = _build_from_stock(tmp_path, 'mmdet', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', (
        "model = dict(backbone=dict(_delete_=True, type='BiFormer', arch=dict(depths=[1, 1, 2, 1], "
        "embed_dims=[32, 64, 64, 64]), n_win=16, norm_eval=True, drop_path_rate=0.2),\n"
        "             neck=dict(in_channels=[32, 64, 64, 64]))\n"))
    assert isinstance(model.backbone, BiFormer) and model.backbone.n_win == 16
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 130))
    assert [tuple(f.shape[-2:]) for f in feats][:4] == _stage_sizes(96, 130)


def test_builds_in_stock_mmseg_upernet(tmp_path):
    model = _build_from_stock(tmp_path, 'mmseg', 'mmseg::_base_/models/upernet_r50.py', (
        "norm_cfg = dict(type='BN', requires_grad=True)\n"
        "model = dict(pretrained=None,\n"
        "             backbone=dict(_delete_=True, type='BiFormer', arch='tiny', n_win=8, drop_path_rate=0.3),\n"
        "             decode_head=dict(in_channels=[64, 128, 256, 512], norm_cfg=norm_cfg, num_classes=150),\n"
        "             auxiliary_head=dict(in_channels=256, norm_cfg=norm_cfg, num_classes=150))\n"))
    assert isinstance(model.backbone, BiFormer) and model.backbone.arch['depths'] == [2, 2, 8, 2]
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 70, 90))
    assert [tuple(f.shape[-2:]) for f in feats] == _stage_sizes(70, 90)


# ---------------------------------------------------------------------------------------------------------------
# GPU: the Triton routing kernel inside the whole backbone equals the PyTorch twin (fwd and every gradient)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_triton_backbone_equals_twin_backbone_gpu():
    """bf16 autocast: |triton - fp32 twin| <= 2 |bf16 twin - fp32 twin| + 1e-3 for outputs and all grads."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x = torch.randn(2, 3, 200, 328, device='cuda')
    ref_model = _randomise_(BiFormer(SMALL, n_win=8, drop_path_rate=0.0, attn_backend='torch')).cuda().train()

    def run(backend, dtype):
        model = BiFormer(SMALL, n_win=8, drop_path_rate=0.0, attn_backend=backend).cuda().train()
        model.load_state_dict(ref_model.state_dict())
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            outs = model(x)
        g = torch.Generator(device='cuda').manual_seed(3)
        sum((o.float() * torch.randn(o.shape, device='cuda', generator=g)).sum() for o in outs).backward()
        return [o.float() for o in outs], {n: p.grad.float() for n, p in model.named_parameters()}

    ref_out, ref_grad = run('torch', torch.float32)
    twin_out, twin_grad = run('torch', torch.bfloat16)
    tri_out, tri_grad = run('triton', torch.bfloat16)
    pairs = [(f'out{i}', r, t, k) for i, (r, t, k) in enumerate(zip(ref_out, twin_out, tri_out))]
    pairs += [(n, ref_grad[n], twin_grad[n], tri_grad[n]) for n in ref_grad]
    for name, ref, twin, tri in pairs:
        scale = ref.abs().max().clamp(min=1e-6)
        err_twin, err_tri = (twin - ref).abs().max() / scale, (tri - ref).abs().max() / scale
        assert err_tri <= 2 * err_twin + 1e-3, f'{name}: triton {err_tri:.2e} vs twin {err_twin:.2e}'
