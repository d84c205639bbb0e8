"""Our heads: the sparse context block against dense references, the neck / decode head against their stock
parents (identical where no context is added), and one training step + prediction of each head config."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import sparse_ops  # noqa: E402
from heads import SparseContext, SparseContextAttention  # noqa: E402  (importing heads registers them)

SIZES = [(1, 1), (13, 7), (16, 16)]


def _ids(sizes):
    return [f'{h}x{w}' for h, w in sizes]


def dense_reference(m: SparseContextAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The block computed with plain dense attention over all H*W pixels in row-major order, with an optional
    (N, N) boolean mask of allowed query-key pairs. x: (B, C, H, W) -> (B, C, H, W)."""
    b, c, h, w = x.shape
    x = x + m.pos_embed(x)
    t = m.norm(x.permute(0, 2, 3, 1)).reshape(b, h * w, c)
    q, k, v = m.qkv(t).view(b, h * w, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) * m.head_dim**-0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float('-inf'))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, -1)
    out = m.proj(out) * m.gamma
    return x + out.view(b, h, w, c).permute(0, 3, 1, 2)


def hilbert_chunk_mask(h: int, w: int, window: int, shift: bool) -> torch.Tensor:
    """(N, N) mask in row-major pixel order: same chunk of `window` consecutive Hilbert positions; shifted chunks
    have boundaries at window - window//2 + m*window."""
    order = sparse_ops.hilbert_order(h, w)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(h * w)
    chunk = (pos + (window // 2 if shift else 0)) // window
    return chunk[:, None] == chunk[None, :]


def _block(mode: str, **kw) -> SparseContextAttention:
    m = SparseContextAttention(24, mode=mode, head_dim=8, layer_scale=1.0, backend='torch', **kw)
    with torch.no_grad():  # non-trivial position encoding and scale so that every term matters
        m.pos_embed.weight.normal_(0, 0.2)
        m.gamma.uniform_(0.5, 1.5)
    return m.double()


@pytest.mark.parametrize('hw', SIZES, ids=_ids(SIZES))
def test_routing_with_every_region_routed_is_dense_attention(hw):
    m = _block('routing', region_size=4, topk=10_000)
    x = torch.randn(2, 24, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), dense_reference(m, x))


@pytest.mark.parametrize('hw', SIZES, ids=_ids(SIZES))
def test_hilbert_window_covering_the_map_is_dense_attention(hw):
    m = _block('hilbert', window=hw[0] * hw[1])
    x = torch.randn(2, 24, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), dense_reference(m, x))


@pytest.mark.parametrize('shift', [False, True], ids=['plain', 'shifted'])
@pytest.mark.parametrize('hw', [(13, 7), (16, 16)], ids=_ids([(13, 7), (16, 16)]))
def test_hilbert_windows_follow_the_curve(hw, shift):
    """Chunks are runs of the Hilbert curve, mapped back to the right pixels (a wrong order or inverse fails)."""
    m = _block('hilbert', window=16, shift=shift)
    x = torch.randn(2, 24, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), dense_reference(m, x, hilbert_chunk_mask(*hw, 16, shift)))


def test_routing_is_sparse_when_topk_is_small():
    m = _block('routing', n_win=4, region_size=None, topk=1)
    x = torch.randn(1, 24, 16, 16, dtype=torch.float64)
    assert not torch.allclose(m(x), dense_reference(m, x))


def test_regions_per_side_grow_with_the_map():
    m = SparseContextAttention(32, region_size=16)
    assert [m.regions_per_side(*s) for s in [(1, 1), (16, 16), (17, 5), (256, 128)]] == [1, 1, 2, 16]
    assert SparseContextAttention(32, region_size=None, n_win=7).regions_per_side(300, 2) == 7


@pytest.mark.parametrize('mode', ['routing', 'hilbert'])
def test_context_stack_gradients_reach_every_parameter(mode):
    m = SparseContext(32, num_blocks=2, mode=mode, head_dim=16, region_size=4, topk=2, window=8)
    assert [blk.shift for blk in m] == [False, True]
    x = torch.randn(2, 32, 13, 7, requires_grad=True)
    m(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='window'), 'mode'),
    (dict(head_dim=7), 'multiple of head_dim'),
    (dict(region_size=None, n_win=None), 'exactly one'),
    (dict(region_size=8, n_win=4), 'exactly one'),
    (dict(topk=0), 'topk'),
    (dict(mode='hilbert', window=0), 'window'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseContextAttention(32, **kwargs)


def test_bad_stack_and_input_are_named():
    with pytest.raises(ValueError, match='num_blocks'):
        SparseContext(32, num_blocks=0)
    with pytest.raises(ValueError, match='shift'):
        SparseContext(32, shift=True)
    with pytest.raises(ValueError, match='NCHW'):
        SparseContextAttention(32)(torch.randn(2, 32, 5))


# ------------------------------------------------------------------------------------------------- vs stock parents
CHANNELS = [8, 16, 32, 64]


def _pyramid(batch=2, h=30, w=21):
    """Backbone-like maps at strides 4..32 of an odd-sized (4h x 4w) image."""
    sizes = [(h, w)]
    for _ in range(3):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return [torch.randn(batch, c, *s) for c, s in zip(CHANNELS, sizes)]


def _load_shared(stock: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Copy our parameters into the stock module; only the context blocks are left out."""
    stock.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith('context.')}, strict=True)


def test_context_fpn_is_fpn_plus_context_on_chosen_levels():
    from mmdet.registry import MODELS
    common = dict(in_channels=CHANNELS, out_channels=16, num_outs=5, add_extra_convs='on_input')
    ours = MODELS.build(dict(type='SparseContextFPN', context_levels=(0, 1),
                             context_cfg=dict(head_dim=8, region_size=4, topk=2), **common)).eval()
    stock = MODELS.build(dict(type='FPN', **common)).eval()
    _load_shared(stock, ours)
    feats = _pyramid()
    with torch.no_grad():
        out, ref = ours(feats), stock(feats)
        assert len(out) == len(ref) == 5
        for level in range(5):
            assert out[level].shape == ref[level].shape
            if level in (0, 1):
                torch.testing.assert_close(out[level], ours.context[level](ref[level]))
                assert not torch.allclose(out[level], ref[level])
            else:
                torch.testing.assert_close(out[level], ref[level])
    with pytest.raises(ValueError, match='context_levels'):
        MODELS.build(dict(type='SparseContextFPN', context_levels=(5, ), **common))


def test_context_uper_head_is_uper_head_plus_context():
    from mmseg.registry import MODELS
    common = dict(in_channels=CHANNELS, in_index=[0, 1, 2, 3], channels=16, pool_scales=(1, 2), num_classes=3,
                  norm_cfg=dict(type='BN'), align_corners=False)
    ours = MODELS.build(dict(type='SparseContextUPerHead', context_cfg=dict(mode='hilbert', head_dim=8, window=32),
                             **common)).eval()
    stock = MODELS.build(dict(type='UPerHead', **common)).eval()
    _load_shared(stock, ours)
    feats = _pyramid()
    with torch.no_grad():
        logits = ours(feats)
        assert logits.shape == (2, 3, 30, 21)
        torch.testing.assert_close(logits, stock.cls_seg(ours.context(stock._forward_feature(feats))))
        assert not torch.allclose(logits, stock(feats))


# ------------------------------------------------------------------------------------------------- head configs
HEAD_CONFIGS = sorted((REPO / 'configs/heads').glob('*demo*.py'))
TINY = {'model.backbone.arch.depths': [1, 1, 1, 1]}


def _load_benchmark():
    spec = importlib.util.spec_from_file_location('sparsedense_tools_benchmark', REPO / 'tools/benchmark.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('path', HEAD_CONFIGS, ids=[p.stem for p in HEAD_CONFIGS])
def test_head_config_trains_one_step_and_predicts(path):
    """The embedded-dataset head configs (tiny backbone, 64 px synthetic batch): loss, backward, an AdamW step
    that changes the context parameters, then predictions."""
    bench = _load_benchmark()
    cfg, scope = bench.load_cfg(str(path), TINY)
    model = bench.build_model(cfg, scope, 'cpu').train()
    context = [m for m in model.modules() if isinstance(m, SparseContext)]
    assert context, 'the config does not use our head'
    before = [p.detach().clone() for m in context for p in m.parameters()]
    data = model.data_preprocessor(bench.synthetic_batch(scope, 2, 64, 64, bench.num_classes_of(cfg), True), True)
    loss, log_vars = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    optim.step()
    after = [p.detach() for m in context for p in m.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after)), 'a context parameter did not train'

    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(bench.synthetic_batch(scope, 2, 64, 64, 1, False), False),
                      mode='predict')
    assert len(preds) == 2
    for p in preds:
        if scope == 'mmdet':
            assert {'bboxes', 'scores', 'labels', 'masks'} <= set(p.pred_instances.keys())
        else:
            assert p.pred_sem_seg.data.shape == (1, 64, 64)
