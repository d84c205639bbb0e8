# Reference: BiFormer-B, official: 47.1 box AP.
_base_ = './retinanet_biformer-s_fpn_1x_coco.py'
# official BiFormer-base ImageNet-1k weights (BiFormer README)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3,
                  init_cfg=dict(checkpoint=pretrained, filename='biformer_base_in1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
