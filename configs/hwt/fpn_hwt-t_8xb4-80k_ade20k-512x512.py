_base_ = ['../_base_/recipes/fpn_8xb4-80k_ade20k-512x512.py', '../_base_/backbones/hwt-t.py']
model = dict(backbone=dict(_base_.backbone, drop_path_rate=0.3), neck=dict(in_channels=[96, 192, 384, 768]))
