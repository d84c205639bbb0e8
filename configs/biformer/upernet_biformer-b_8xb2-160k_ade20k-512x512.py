# Reference: BiFormer-B, official: 51.0 mIoU (single scale).
_base_ = './upernet_biformer-s_8xb2-160k_ade20k-512x512.py'
# official BiFormer-base ImageNet-1k weights (BiFormer README)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content'
model = dict(
    backbone=dict(
        arch='base', drop_path_rate=0.4,
        init_cfg=dict(checkpoint=pretrained, filename='biformer_base_in1k.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
