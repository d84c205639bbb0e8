"""Registration: HWT is found through MMEngine's root MODELS and the mmdet / mmseg child registries, and STOCK
mmdet Mask R-CNN / mmseg UperNet configs take it with ``custom_imports`` + ``backbone=dict(_delete_=True, ...)``."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import WEIGHT_INITIALIZERS, init_default_scope

import backbones
from backbones.hwt import HWT

TINY = dict(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, mlp_ratio=2.0)
IN_CHANNELS = [8, 16, 32, 64]


def test_root_registration():
    assert ROOT_MODELS.get('HWT') is HWT is backbones.HWT
    assert WEIGHT_INITIALIZERS.get('ConvertedPretrained') is not None
    assert isinstance(ROOT_MODELS.build(dict(type='HWT', arch=TINY)), HWT)


def write_config(tmp_path, base, neck_key, extra=''):
    path = tmp_path / 'cfg.py'
    path.write_text(textwrap.dedent(f"""
        _base_ = '{base}'
        custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
        model = dict({extra}
            backbone=dict(_delete_=True, type='HWT', arch={TINY!r}, out_indices=(0, 1, 2, 3), frozen_stages=1,
                          drop_path_rate=0.1),
            {neck_key}=dict(in_channels={IN_CHANNELS!r}))
    """))
    return Config.fromfile(str(path))


def test_stock_mmdet_mask_rcnn(tmp_path):
    from mmdet.registry import MODELS as MMDET_MODELS
    cfg = write_config(tmp_path, 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'neck')
    assert cfg.model.backbone.type == 'HWT' and 'depth' not in cfg.model.backbone
    init_default_scope('mmdet')
    assert MMDET_MODELS.get('HWT') is HWT
    detector = MMDET_MODELS.build(cfg.model)
    assert isinstance(detector.backbone, HWT) and detector.backbone.frozen_stages == 1
    detector.eval()
    with torch.no_grad():
        feats = detector.extract_feat(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 24), (1, 256, 8, 12), (1, 256, 4, 6), (1, 256, 2, 3),
                                               (1, 256, 1, 2)]


def test_stock_mmseg_upernet(tmp_path):
    from mmseg.registry import MODELS as MMSEG_MODELS
    # mmseg's EncoderDecoder pushes model.pretrained (the stock ResNet URL) into the backbone: clear it
    cfg = write_config(tmp_path, 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py', 'decode_head',
                       extra='pretrained=None,')
    cfg.model.auxiliary_head.in_channels = IN_CHANNELS[2]
    init_default_scope('mmseg')
    assert MMSEG_MODELS.get('HWT') is HWT
    segmentor = MMSEG_MODELS.build(cfg.model)
    assert isinstance(segmentor.backbone, HWT)
    segmentor.eval()
    with torch.no_grad():
        logits = segmentor.encode_decode(torch.randn(1, 3, 64, 80), [dict(img_shape=(64, 80))])
    assert logits.shape == (1, 150, 64, 80)


def test_unknown_backbone_arch_in_config(tmp_path):
    from mmdet.registry import MODELS as MMDET_MODELS
    init_default_scope('mmdet')
    with pytest.raises(KeyError, match='tiny'):
        MMDET_MODELS.build(dict(type='HWT', arch='gigantic'))


@pytest.mark.parametrize('name', backbones.__all__[1:])
def test_every_backbone_visible_from_mmdet_and_mmseg(name):
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS
    for scope, registry in (('mmdet', MMDET_MODELS), ('mmseg', MMSEG_MODELS)):
        init_default_scope(scope)
        assert registry.get(name) is getattr(backbones, name) is ROOT_MODELS.get(name)
