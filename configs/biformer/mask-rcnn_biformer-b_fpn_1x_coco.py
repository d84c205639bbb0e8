# Reference: BiFormer-B, official: 48.6 box AP / 43.7 mask AP.
_base_ = './mask-rcnn_biformer-s_fpn_1x_coco.py'
model = dict(backbone=dict(arch='base', drop_path_rate=0.3), neck=dict(in_channels=[96, 192, 384, 768]))
