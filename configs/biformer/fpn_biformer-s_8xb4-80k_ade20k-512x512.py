# Reference: BiFormer-S, official: 48.9 mIoU.
_base_ = ['../_base_/recipes/fpn_8xb4-80k_ade20k-512x512.py', '../_base_/backbones/biformer-s.py']
model = dict(
    backbone=dict(_base_.backbone, n_win=8, drop_path_rate=0.15),
    neck=dict(in_channels=[64, 128, 256, 512]))
