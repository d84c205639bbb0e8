"""Converter for the official BiFormer checkpoints (rayleizhu/BiFormer, ``models/biformer.py`` + the mmdet / mmseg
``models_mm/biformer_mm.py`` wrappers): round trip on synthetic state dicts with the official key names and shapes.

The official key table below is written from the official model code, independently of our modules.
"""
from __future__ import annotations

import functools
import logging
from unittest import mock

import pytest
import torch

from backbones.biformer import BiFormer
from backbones.converters import get_converter
from backbones.converters.biformer import convert, convert_key

# official model factories biformer_tiny/small/base: depth, embed_dim (qk_dims = embed_dim, mlp ratio 3, head_dim 32)
OFFICIAL = {
    'tiny': ([2, 2, 8, 2], [64, 128, 256, 512]),
    'small': ([4, 4, 18, 4], [64, 128, 256, 512]),
    'base': ([4, 4, 18, 4], [96, 192, 384, 768]),
}
PUBLISHED_PARAMS_M = {'tiny': 13.1, 'small': 25.5, 'base': 56.8}  # README, with the 1000-class head
BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


def _bn(prefix: str, c: int) -> dict:
    shapes = {'weight': (c,), 'bias': (c,), 'running_mean': (c,), 'running_var': (c,), 'num_batches_tracked': ()}
    return {f'{prefix}.{name}': shape for name, shape in shapes.items()}


def official_shapes(arch: str, *, dense: bool, in_chans: int = 3, num_classes: int = 1000) -> dict:
    """``{official key: shape}`` of ``BiFormer`` (classification) or ``BiFormer_mm`` (dense, no ``backbone.``)."""
    depths, dims = OFFICIAL[arch]
    s = {'downsample_layers.0.0.weight': (dims[0] // 2, in_chans, 3, 3), 'downsample_layers.0.0.bias': (dims[0] // 2,),
         **_bn('downsample_layers.0.1', dims[0] // 2),
         'downsample_layers.0.3.weight': (dims[0], dims[0] // 2, 3, 3), 'downsample_layers.0.3.bias': (dims[0],),
         **_bn('downsample_layers.0.4', dims[0])}
    for i in range(1, 4):
        s[f'downsample_layers.{i}.0.weight'] = (dims[i], dims[i - 1], 3, 3)
        s[f'downsample_layers.{i}.0.bias'] = (dims[i],)
        s.update(_bn(f'downsample_layers.{i}.1', dims[i]))
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f'stages.{i}.{j}.'
            s.update({p + 'pos_embed.weight': (c, 1, 3, 3), p + 'pos_embed.bias': (c,),
                      p + 'norm1.weight': (c,), p + 'norm1.bias': (c,),
                      p + 'norm2.weight': (c,), p + 'norm2.bias': (c,),
                      p + 'attn.lepe.weight': (c, 1, 5, 5), p + 'attn.lepe.bias': (c,),
                      p + 'mlp.0.weight': (3 * c, c), p + 'mlp.0.bias': (3 * c,),
                      p + 'mlp.3.weight': (c, 3 * c), p + 'mlp.3.bias': (c,)})
            if i < 3:  # BiLevelRoutingAttention: QKVLinear(qk_dim + qk_dim + dim) with bias, wo
                s.update({p + 'attn.qkv.qkv.weight': (3 * c, c), p + 'attn.qkv.qkv.bias': (3 * c,),
                          p + 'attn.wo.weight': (c, c), p + 'attn.wo.bias': (c,)})
            else:  # topk == -2: AttentionLePE, qkv_bias=False
                s.update({p + 'attn.qkv.weight': (3 * c, c),
                          p + 'attn.proj.weight': (c, c), p + 'attn.proj.bias': (c,)})
    if dense:
        for i, c in enumerate(dims):
            s[f'extra_norms.{i}.weight'] = (c,)
            s[f'extra_norms.{i}.bias'] = (c,)
    else:
        s.update(_bn('norm', dims[-1]))
        s['head.weight'] = (num_classes, dims[-1])
        s['head.bias'] = (num_classes,)
    return s


def synthetic(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 100, shape, generator=g) if k.endswith('num_batches_tracked')
                else torch.randn(shape, generator=g)) for k, shape in shapes.items()}


@functools.lru_cache(maxsize=None)
def ours(arch: str, out_indices: tuple = (0, 1, 2, 3)) -> BiFormer:
    """Our model, built once per (arch, out_indices) for this file (loading into it is harmless); the official
    trunc-normal init is skipped (slow, irrelevant to names and shapes)."""
    with mock.patch('backbones.biformer.init_linear_and_norm', lambda module: None):
        return BiFormer(arch=arch, out_indices=out_indices, drop_path_rate=0.0)


EXPECTED_RENAMES = {'attn.qkv.qkv.': 'attn.qkv.', 'attn.wo.': 'attn.proj.', 'mlp.0.': 'mlp.fc1.', 'mlp.3.': 'mlp.fc2.'}


def _expected_name(key: str) -> str:
    for old, new in EXPECTED_RENAMES.items():
        key = key.replace(old, new)
    if key.startswith('extra_norms.'):
        _, i, rest = key.split('.', 2)
        key = f'norm{i}.{rest}'
    return key


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_published_parameter_counts(arch):
    shapes = official_shapes(arch, dense=False)
    n = sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith(BN_BUFFERS))
    assert round(n / 1e6, 1) == PUBLISHED_PARAMS_M[arch]


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_classification_checkpoint_round_trip(arch):
    official = synthetic(official_shapes(arch, dense=False))
    converted = convert({'model': official})
    model = ours(arch)
    our_state = model.state_dict()
    out_norms = {k for k in our_state if k.startswith('norm')}
    assert out_norms and set(converted) == set(our_state) - out_norms
    for key, value in official.items():
        if key.startswith(('head.', 'norm.')):
            continue
        new = _expected_name(key)
        assert converted[new] is value, key  # renamed, not copied
        assert our_state[new].shape == value.shape, key
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == out_norms


@pytest.mark.parametrize('arch', ['tiny', 'base'])
@pytest.mark.parametrize('wrapper', ['state_dict', 'module'])
def test_dense_checkpoint_round_trip(arch, wrapper):
    backbone = synthetic(official_shapes(arch, dense=True), seed=1)
    full = {f'backbone.{k}': v for k, v in backbone.items()}
    full['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    full['roi_head.bbox_head.fc_cls.weight'] = torch.zeros(81, 1024)
    if wrapper == 'state_dict':
        checkpoint = {'state_dict': full, 'meta': {}}
    else:
        checkpoint = {f'module.{k}': v for k, v in full.items()}
    converted = convert(checkpoint)
    model = ours(arch)
    assert set(converted) == set(model.state_dict())
    model.load_state_dict(converted, strict=True)
    for key, value in backbone.items():
        assert converted[_expected_name(key)] is value, key
    assert converted['norm2.weight'] is backbone['extra_norms.2.weight']


def test_dense_checkpoint_loads_with_fewer_out_indices():
    converted = convert({f'backbone.{k}': v for k, v in synthetic(official_shapes('tiny', dense=True)).items()})
    result = ours('tiny', (1, 3)).load_state_dict(converted, strict=False)
    assert not result.missing_keys
    assert sorted(result.unexpected_keys) == ['norm0.bias', 'norm0.weight', 'norm2.bias', 'norm2.weight']


@pytest.mark.parametrize('bad_key', ['stages.0.0.mlp.1.dwconv.weight',  # mlp_dwconv variant
                                     'stages.0.0.attn.router.emb.weight',  # param_routing variant
                                     'layers.0.blocks.0.attn.qkv.weight'])  # not BiFormer at all
def test_unknown_keys_pass_through_and_are_reported(bad_key, monkeypatch):
    from backbones.converters import biformer as module
    logged = []
    monkeypatch.setattr(module, 'print_log', lambda msg, **kw: logged.append((msg, kw.get('level'))))
    state = synthetic(official_shapes('tiny', dense=False))
    state[bad_key] = torch.zeros(1)
    converted = convert(state)
    assert converted[bad_key] is state[bad_key]
    assert any(bad_key in msg and level == logging.WARNING for msg, level in logged)
    result = ours('tiny').load_state_dict(converted, strict=False)
    assert result.unexpected_keys == [bad_key]
    with pytest.raises(ValueError, match='not an official BiFormer'):
        convert_key(bad_key)


def test_input_not_mutated_and_registry():
    state = synthetic(official_shapes('tiny', dense=False))
    before = dict(state)
    convert(state)
    assert state.keys() == before.keys() and all(state[k] is before[k] for k in state)
    assert get_converter('biformer') is convert
