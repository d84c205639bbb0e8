# Reference: BiFormer-B, official: 51.0 mIoU (single scale).
_base_ = './upernet_biformer-s_8xb2-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
