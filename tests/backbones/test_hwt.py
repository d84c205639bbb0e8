"""HWT backbone: presets, output shapes at odd sizes, freezing, gradients, checkpointing, init_cfg, bad input."""
import math

import pytest
import torch

from backbones.hwt import HWT, HWT_PRESETS, HilbertWindowAttention
from _checks import assert_checkpointed_equals_plain

TINY = dict(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, mlp_ratio=2.0)
MINI = dict(embed_dims=4, depths=(2, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=7, mlp_ratio=1.0)


def expected_params(embed_dims, depths, num_heads, window_size, mlp_ratio, out_indices=(0, 1, 2, 3), **_):
    """Parameter count of a Swin-layout backbone, counted by hand."""
    total = 3 * 16 * embed_dims + embed_dims + 2 * embed_dims  # patch embed conv + norm
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c, hidden = embed_dims * 2 ** i, int(embed_dims * 2 ** i * mlp_ratio)
        block = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + heads * (2 * window_size ** 2 - 1) ** 2 \
            + (c * hidden + hidden) + (hidden * c + c)
        total += depth * block
        if i < len(depths) - 1:
            total += 8 * c + 8 * c * c  # merging norm (4c) + reduction 4c -> 2c
        if i in out_indices:
            total += 2 * c
    return total


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', sorted(HWT_PRESETS))
def test_presets_structure(name):
    model = HWT(arch=name)
    preset = HWT_PRESETS[name]
    assert n_params(model) == expected_params(**preset)
    assert [len(stage.blocks) for stage in model.layers] == list(preset['depths'])
    assert model.num_features == tuple(preset['embed_dims'] * 2 ** i for i in range(4))
    assert [stage.blocks[0].attn.num_heads for stage in model.layers] == list(preset['num_heads'])
    assert [b.attn.shift for b in model.layers[2].blocks] == [j % 2 == 1 for j in range(preset['depths'][2])]
    assert model.layers[3].downsample is None and model.layers[0].downsample is not None
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (preset['num_heads'][0], 97, 97)  # offsets up to +-(7**2 - 1): any in a 49-token window
    assert model.drop_path_rate == preset['drop_path_rate']


def test_tiny_matches_swin_t_count():
    # Swin-T classifier (timm/official): 28,288,354 parameters; ours drops the head (768*1000+1000) and the final
    # norm (2*768), adds four output norms (2*(96+192+384+768)) and has 97x97 instead of 13x13 bias tables
    # (3*2 + 6*2 + 12*6 + 24*2 = 138 head-tables).
    assert n_params(HWT(arch='tiny')) == 28_288_354 - 769_000 - 1_536 + 2_880 + 138 * (97 ** 2 - 13 ** 2)


def test_drop_path_rate_override():
    model = HWT(arch=TINY, drop_path_rate=0.3)
    assert model.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.3)
    assert model.layers[0].blocks[0].drop_path.drop_prob == 0.0
    assert HWT(arch=TINY).drop_path_rate == 0.1


def expected_shapes(h, w, dims, out_indices=(0, 1, 2, 3)):
    shapes = []
    for i in range(4):
        h, w = math.ceil(h / (4 if i == 0 else 2)), math.ceil(w / (4 if i == 0 else 2))
        if i in out_indices:
            shapes.append((1, dims * 2 ** i, h, w))
    return shapes


@pytest.mark.parametrize('hw', [(64, 64), (112, 137), (17, 17), (1, 1), (5, 33)],
                         ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_output_shapes(hw):
    model = HWT(arch=TINY).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    assert [tuple(o.shape) for o in outs] == expected_shapes(*hw, 8)
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('hw', [(511, 511), (800, 1333)], ids=['511x511', '800x1333'])
def test_output_shapes_large(hw):
    model = HWT(arch=MINI, out_indices=(0, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    assert [tuple(o.shape) for o in outs] == expected_shapes(*hw, 4, (0, 3))


def test_out_indices_subset_and_norms():
    model = HWT(arch=TINY, out_indices=(1, -1))
    assert model.out_indices == (1, 3)
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')
    outs = model(torch.randn(2, 3, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 4, 6), (2, 64, 1, 2)]


def test_ragged_window_is_attended_not_truncated():
    # 9x9 stage-0 map = 81 Hilbert tokens: one full 49-token window and a ragged 32-token one. With one unshifted
    # block, the output of the LAST token must depend on another token of the ragged window and on no token of the
    # first window (the official code drops the ragged tail).
    import sparse_ops
    model = HWT(arch=dict(TINY, depths=(1, 1, 1, 1)), out_indices=(0,)).eval()
    order = sparse_ops.hilbert_order(9, 9).tolist()
    last_y, last_x = divmod(order[80], 9)

    def output_at_last(pixel_token):
        x = torch.randn(1, 3, 36, 36, generator=torch.Generator().manual_seed(0))
        y, xx = divmod(pixel_token, 9)
        base = model(x)[0][0, :, last_y, last_x]
        x[..., 4 * y:4 * y + 4, 4 * xx:4 * xx + 4] += 3.0
        return base, model(x)[0][0, :, last_y, last_x]

    with torch.no_grad():
        before, after = output_at_last(order[50])  # same (ragged) window
        assert not torch.allclose(before, after)
        before, after = output_at_last(order[10])  # first window
        torch.testing.assert_close(before, after)


def test_frozen_stages():
    model = HWT(arch=TINY, frozen_stages=2)
    model.train()
    frozen = [model.patch_embed, model.layers[0], model.layers[1], model.norm0, model.norm1]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(('layers.2', 'layers.3', 'norm2', 'norm3')) for n in trainable)
    assert model.layers[2].training


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = HWT(arch=dict(TINY, depths=(2, 2, 2, 2)), drop_path_rate=0.0)
    model.init_weights()
    model.train()
    outs = model(torch.randn(2, 3, 40, 56))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad


def test_with_cp_matches_plain():
    torch.manual_seed(0)
    plain = HWT(arch=TINY, drop_path_rate=0.0)
    cp = HWT(arch=TINY, drop_path_rate=0.0, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 36, 44)
    assert_checkpointed_equals_plain(plain, cp, x)


def test_rpb_is_resolution_independent():
    model = HWT(arch=TINY)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    model(torch.randn(1, 3, 64, 64))
    model(torch.randn(1, 3, 100, 36))
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == shapes
    assert not any('attn_mask' in n or 'index' in n for n, _ in model.named_buffers())


def test_attention_uses_rpb():
    attn = HilbertWindowAttention(8, 2, 3, shift=False)
    x = torch.randn(1, 36, 8)
    before = attn(x, (6, 6))
    with torch.no_grad():
        attn.relative_position_bias_table[:, 8, 9] += 5.0  # offset (dy, dx) = (0, 1): radius 3**2 - 1 = 8
    assert not torch.allclose(attn(x, (6, 6)), before)


@pytest.mark.parametrize('arch, err, match', [
    ('huge', KeyError, 'tiny'),
    (dict(embed_dims=8, depths=(1,), num_heads=(1,), window_size=7), ValueError, 'mlp_ratio'),
    (dict(TINY, num_heads=(3, 2, 2, 4)), ValueError, 'divisible'),
    (dict(TINY, depths=(2, 2, 2)), ValueError, 'equal length'),
    (dict(TINY, window_size=0), ValueError, 'window_size'),
    (dict(TINY, windowsize=7), ValueError, 'unknown keys'),
    (dict(TINY, num_heads=(1, 0, 2, 4)), ValueError, 'num_heads'),
    (dict(TINY, embed_dims=0), ValueError, 'embed_dims'),
    (dict(TINY, mlp_ratio='4'), ValueError, 'mlp_ratio'),
])
def test_bad_arch(arch, err, match):
    with pytest.raises(err, match=match):
        HWT(arch=arch)


@pytest.mark.parametrize('x, match', [(torch.zeros(1, 1, 32, 32), 'channels'),
                                      (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 'dtype'),
                                      (torch.zeros(3, 32, 32), 'ndim')])
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        HWT(arch=TINY)(x)


def test_in_channels():
    model = HWT(arch=TINY, in_channels=1, out_indices=(0,))
    assert model(torch.randn(1, 1, 16, 16))[0].shape == (1, 8, 4, 4)


def test_init_weights_default_and_pretrained(tmp_path):
    torch.manual_seed(0)
    source = HWT(arch=TINY)
    source.init_weights()
    table = source.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.std() > 0.005  # trunc-normal, not the zeros of construction
    path = tmp_path / 'own.pth'
    torch.save({'state_dict': source.state_dict()}, path)
    target = HWT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    target.init_weights()
    for (name, p1), p2 in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(p2, p1, msg=name)
