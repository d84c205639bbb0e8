# Reference: BiFormer-B, official: 47.1 box AP.
_base_ = './retinanet_biformer-s_fpn_1x_coco.py'
model = dict(backbone=dict(arch='base', drop_path_rate=0.3), neck=dict(in_channels=[96, 192, 384, 768]))
