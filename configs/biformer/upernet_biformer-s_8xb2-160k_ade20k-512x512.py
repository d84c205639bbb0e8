# Reference: BiFormer-S, official: 49.8 mIoU (single scale).
_base_ = ['../_base_/recipes/upernet_8xb2-160k_ade20k-512x512.py', '../_base_/backbones/biformer-s.py']
model = dict(
    backbone=dict(_base_.backbone, n_win=8, drop_path_rate=0.3),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
