"""Converters for the official NAT / DiNAT checkpoints (SHI-Labs/Neighborhood-Attention-Transformer) and HNT
checkpoints (Yunge6666/Hilbert-Local-Attention ``hnt.py``): round trips on synthetic state dicts with the official
key names and shapes.

The official key table below is written from the official model code (``classification/nat.py``:
``ConvTokenizer.proj`` = Sequential(conv, conv) + ``norm``; ``NATBlock.blocks`` of ``NATLayer`` with ``norm1``,
``attn`` = NATTEN ``NeighborhoodAttention2D`` (``qkv``, ``rpb``, ``proj``), ``norm2``, ``mlp.fc1/fc2``, ``gamma1/2``;
``NATBlock.downsample`` = ``ConvDownsampler`` (``reduction`` conv without bias, ``norm``); classifier ``norm`` +
``head``; detection/segmentation ``nat.py``: ``norm{i}`` per out index, no ``norm`` / ``head``), independently of our
modules. HNT uses NATTEN 0.14.4's ``NeighborhoodAttention1D`` whose ``rpb`` is ``(heads, 2K-1)``.
"""
from __future__ import annotations

import logging

import pytest
import torch

from backbones.converters import get_converter
from backbones.converters import dinat as dinat_converter
from backbones.converters import hnt as hnt_converter
from backbones.converters import nat as nat_converter
from backbones.converters.common import load_converted, select_prefix, strip_prefixes
from backbones.dinat import DiNAT
from backbones.hnt import HNT
from backbones.nat import NAT

# official factories: depths, embed_dim, heads, mlp_ratio, layer_scale, kernel
OFFICIAL = {
    'nat_mini': ([3, 4, 6, 5], 64, [2, 4, 8, 16], 3, None, 7),
    'nat_tiny': ([3, 4, 18, 5], 64, [2, 4, 8, 16], 3, None, 7),
    'nat_small': ([3, 4, 18, 5], 96, [3, 6, 12, 24], 2, 1e-5, 7),
    'nat_base': ([3, 4, 18, 5], 128, [4, 8, 16, 32], 2, 1e-5, 7),
    'dinat_small': ([3, 4, 18, 5], 96, [3, 6, 12, 24], 2, None, 7),
    'dinat_base': ([3, 4, 18, 5], 128, [4, 8, 16, 32], 2, 1e-5, 7),
    'nat1D_mini': ([3, 4, 6, 5], 64, [2, 4, 8, 16], 3, None, 49),
}
PUBLISHED_M = {'nat_mini': 20, 'nat_tiny': 28, 'nat_small': 51, 'nat_base': 90, 'dinat_small': 51, 'dinat_base': 90}
SMALL = ([1, 2, 1, 1], 8, [1, 2, 2, 4], 2, 1e-5, 7)  # a cheap official-layout model for loading round trips


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Small CPU shapes run ~50x faster on one intra-op thread than on two oversubscribed ones (shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def official_shapes(depths, dim, heads, mlp, layer_scale, kernel, *, rpb_1d=False, dense=False, in_chans=3):
    """``{official key: shape}`` of the official classifier (``dense=False``) or detection backbone."""
    s = {'patch_embed.proj.0.weight': (dim // 2, in_chans, 3, 3), 'patch_embed.proj.0.bias': (dim // 2,),
         'patch_embed.proj.1.weight': (dim, dim // 2, 3, 3), 'patch_embed.proj.1.bias': (dim,),
         'patch_embed.norm.weight': (dim,), 'patch_embed.norm.bias': (dim,)}
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c, hidden = dim * 2 ** i, int(dim * 2 ** i * mlp)
        for j in range(depth):
            p = f'levels.{i}.blocks.{j}.'
            s.update({p + 'norm1.weight': (c,), p + 'norm1.bias': (c,),
                      p + 'attn.qkv.weight': (3 * c, c), p + 'attn.qkv.bias': (3 * c,),
                      p + 'attn.rpb': (h, 2 * kernel - 1) if rpb_1d else (h, 2 * kernel - 1, 2 * kernel - 1),
                      p + 'attn.proj.weight': (c, c), p + 'attn.proj.bias': (c,),
                      p + 'norm2.weight': (c,), p + 'norm2.bias': (c,),
                      p + 'mlp.fc1.weight': (hidden, c), p + 'mlp.fc1.bias': (hidden,),
                      p + 'mlp.fc2.weight': (c, hidden), p + 'mlp.fc2.bias': (c,)})
            if layer_scale is not None:
                s.update({p + 'gamma1': (c,), p + 'gamma2': (c,)})
        if i < len(depths) - 1:
            s.update({f'levels.{i}.downsample.reduction.weight': (2 * c, c, 3, 3),
                      f'levels.{i}.downsample.norm.weight': (2 * c,), f'levels.{i}.downsample.norm.bias': (2 * c,)})
    last = dim * 2 ** (len(depths) - 1)
    if dense:
        for i in range(len(depths)):
            s.update({f'norm{i}.weight': (dim * 2 ** i,), f'norm{i}.bias': (dim * 2 ** i,)})
    else:
        s.update({'norm.weight': (last,), 'norm.bias': (last,), 'head.weight': (1000, last), 'head.bias': (1000,)})
    return s


def synthetic(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}


def arch_dict(spec):
    depths, dim, heads, mlp, layer_scale, kernel = spec
    return dict(depths=depths, embed_dims=dim, num_heads=heads, mlp_ratio=float(mlp), layer_scale=layer_scale,
                kernel_size=kernel)


@pytest.mark.parametrize('name', sorted(PUBLISHED_M))
def test_official_key_table_matches_published_size(name):
    # sanity of the key table itself: the official classifier sizes of NAT.md / DiNAT.md
    total = sum(torch.Size(s).numel() for s in official_shapes(*OFFICIAL[name]).values())
    assert round(total / 1e6) == PUBLISHED_M[name]


@pytest.fixture
def on_meta(monkeypatch):
    """Build on the meta device (no memory, no init cost); the drop-path schedule (a Python list made with
    ``torch.linspace(...).tolist()``) is computed on the CPU."""
    import backbones.nat as nat_module
    real = nat_module.drop_path_schedule

    def on_cpu(rate, depths):
        with torch.device('cpu'):
            return real(rate, depths)

    monkeypatch.setattr(nat_module, 'drop_path_schedule', on_cpu)
    with torch.device('meta'):
        yield


@pytest.mark.parametrize('name,cls,arch', [('nat_mini', NAT, 'mini'), ('nat_tiny', NAT, 'tiny'),
                                           ('nat_small', NAT, 'small'), ('nat_base', NAT, 'base'),
                                           ('dinat_small', DiNAT, 'small'), ('dinat_base', DiNAT, 'base'),
                                           ('nat1D_mini', HNT, 'mini')])
def test_presets_have_exactly_the_official_shapes(name, cls, arch, on_meta):
    shapes = official_shapes(*OFFICIAL[name], rpb_1d=cls is HNT)
    fmt = {NAT: 'nat', DiNAT: 'dinat', HNT: 'hnt'}[cls]
    converted = get_converter(fmt)({k: torch.empty(v) for k, v in shapes.items()})  # meta tensors
    ours = {k: tuple(v.shape) for k, v in cls(arch=arch, out_indices=(3,)).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours


@pytest.mark.parametrize('fmt,cls,rpb_1d', [('nat', NAT, False), ('dinat', DiNAT, False), ('hnt', HNT, True)])
def test_classifier_round_trip(fmt, cls, rpb_1d, caplog):
    official = synthetic(official_shapes(*SMALL, rpb_1d=rpb_1d))
    converted = get_converter(fmt)(official)
    assert 'head.weight' not in converted and 'norm.weight' not in converted
    model = cls(arch=arch_dict(SMALL), out_indices=(3,))
    model.load_state_dict(converted, strict=True)
    own = model.state_dict()
    for key, value in official.items():
        if key.startswith('head.'):
            continue
        ours = key.replace('norm.', 'norm3.') if key.startswith('norm.') else key
        torch.testing.assert_close(own[ours], value, msg=key)


@pytest.mark.parametrize('fmt,cls', [('nat', NAT), ('dinat', DiNAT)])
def test_detection_checkpoint_round_trip(fmt, cls):
    # mmdet / mmseg checkpoint: state_dict with backbone.* (incl. norm0..norm3) next to neck / head keys
    backbone = synthetic(official_shapes(*SMALL, dense=True))
    ckpt = {f'backbone.{k}': v for k, v in backbone.items()}
    ckpt['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 8, 1, 1)
    converted = get_converter(fmt)(select_prefix(ckpt, 'backbone'))
    model = cls(arch=arch_dict(SMALL))
    model.load_state_dict(converted, strict=True)
    for key, value in backbone.items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_prefixes_are_stripped():
    official = synthetic(official_shapes(*SMALL))
    wrapped = {f'module.{k}': v for k, v in official.items()}
    assert sorted(nat_converter.convert(wrapped)) == sorted(nat_converter.convert(official))
    assert sorted(strip_prefixes(wrapped)) == sorted(official)


def test_converters_are_registered():
    assert get_converter('nat') is nat_converter.convert
    assert get_converter('dinat') is dinat_converter.convert
    assert get_converter('hnt') is hnt_converter.convert


def test_convert_is_pure():
    official = synthetic(official_shapes(*SMALL))
    before = {k: v.clone() for k, v in official.items()}
    nat_converter.convert(official, kernel_size=5)
    assert sorted(official) == sorted(before)
    assert all(torch.equal(official[k], before[k]) for k in before)


def test_unknown_keys_pass_through_and_are_reported():
    official = synthetic(official_shapes(*SMALL))
    official['levels.0.blocks.0.attn.relative_position_index'] = torch.zeros(3)
    messages = []
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        converted = nat_converter.convert(official)
    finally:
        logger.removeHandler(handler)
    assert 'levels.0.blocks.0.attn.relative_position_index' in converted
    assert any('relative_position_index' in m and 'unrecognised' in m for m in messages)
    assert any('head.weight' in m for m in messages)  # dropped classifier is reported
    model = NAT(arch=arch_dict(SMALL), out_indices=(3,))
    result = load_converted(model, converted)
    assert result.unexpected == ['levels.0.blocks.0.attn.relative_position_index']
    assert not result.missing and not result.mismatched


def test_wrong_format_raises():
    with pytest.raises(ValueError, match='not a nat checkpoint'):
        nat_converter.convert({'layers.0.blocks.0.attn.qkv.weight': torch.zeros(3, 1)})
    with pytest.raises(ValueError, match='2D table'):  # a NAT (2D rpb) checkpoint given to the HNT converter
        hnt_converter.convert(synthetic(official_shapes(*SMALL)))
    with pytest.raises(ValueError, match='3D table'):
        dinat_converter.convert(synthetic(official_shapes(*SMALL, rpb_1d=True)))


def test_rpb_resize_2d_and_1d():
    official = synthetic(official_shapes(*SMALL))
    converted = nat_converter.convert(official, kernel_size=5)
    table = converted['levels.1.blocks.1.attn.rpb']
    assert table.shape == (2, 9, 9)
    source = official['levels.1.blocks.1.attn.rpb']
    torch.testing.assert_close(table[:, 4, 4], source[:, 6, 6])  # zero offset stays on the centre
    torch.testing.assert_close(table[:, 0, 0], source[:, 0, 0])  # extreme offsets stay on the corners
    # a kernel-5 model loads it
    NAT(arch=dict(arch_dict(SMALL), kernel_size=5), out_indices=(3,)).load_state_dict(converted, strict=True)

    official = synthetic(official_shapes(*SMALL, rpb_1d=True))
    converted = hnt_converter.convert(official, kernel_size=3)
    assert converted['levels.0.blocks.0.attn.rpb'].shape == (1, 5)
    rpb = 'levels.0.blocks.0.attn.rpb'
    torch.testing.assert_close(converted[rpb][:, 2], official[rpb][:, 6])
    with pytest.raises(ValueError, match='odd'):
        nat_converter.convert(official, kernel_size=4)


def test_load_converted_resizes_tables_to_the_model():
    # an 11x11 checkpoint (dinat_large_*_11x11interp style) into a kernel-7 model through load_converted
    official = synthetic(official_shapes(*SMALL[:5], 11))
    model = DiNAT(arch=arch_dict(SMALL), dilations=[[1], [1, 2], [1], [1]], out_indices=(3,))
    result = load_converted(model, dinat_converter.convert(official), strict=True, resize_tables=True)
    assert not result.mismatched and len(result.resized) == sum(SMALL[0])
    assert model.levels[0].blocks[0].attn.rpb.shape == (1, 13, 13)
    with pytest.raises(RuntimeError, match='shape-mismatched'):  # not asked: an error
        load_converted(model, dinat_converter.convert(official), strict=True)


def test_hnt_checkpoint_of_another_kernel_is_an_error_unless_asked(tmp_path):
    """The official nat1D_tiny passes kernel 7: its (heads, 13) tables do not silently become kernel 49."""
    import backbones.converters.init  # noqa: F401  (registers ConvertedPretrained)
    official = synthetic(official_shapes(*SMALL[:5], 7, rpb_1d=True))
    path = tmp_path / 'hnt_k7.pth'
    torch.save(official, path)
    cfg = dict(type='ConvertedPretrained', checkpoint=str(path), convert_from='hnt')
    arch = dict(arch_dict(SMALL), kernel_size=49)
    from backbones.converters.init import PretrainedError
    with pytest.raises(PretrainedError, match='shape-mismatched'):
        HNT(arch=arch, init_cfg=cfg).init_weights()
    model = HNT(arch=arch, init_cfg=dict(cfg, resize_bias_tables=True))
    model.init_weights()
    assert model.state_dict()['levels.0.blocks.0.attn.rpb'].shape == (1, 97)
    model = HNT(arch=dict(arch_dict(SMALL), kernel_size=7), init_cfg=cfg)  # the official kernel: loads as it is
    model.init_weights()
    torch.testing.assert_close(model.state_dict()['levels.1.blocks.1.attn.rpb'], official['levels.1.blocks.1.attn.rpb'])


def test_converted_pretrained_init_cfg(tmp_path):
    import backbones.converters.init  # noqa: F401  (registers ConvertedPretrained)
    official = synthetic(official_shapes(*SMALL, rpb_1d=True))
    path = tmp_path / 'hnt_official.pth'
    torch.save(official, path)
    model = HNT(arch=arch_dict(SMALL), init_cfg=dict(type='ConvertedPretrained', checkpoint=str(path),
                                                     convert_from='hnt'))
    model.init_weights()
    state = model.state_dict()
    torch.testing.assert_close(state['levels.2.blocks.0.attn.rpb'], official['levels.2.blocks.0.attn.rpb'])
    torch.testing.assert_close(state['norm3.weight'], official['norm.weight'])
    torch.testing.assert_close(state['patch_embed.proj.0.weight'], official['patch_embed.proj.0.weight'])
