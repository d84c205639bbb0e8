# Reference: BiFormer-S, official: 47.8 box AP / 43.2 mask AP.
_base_ = ['../_base_/recipes/mask-rcnn_fpn_1x_coco.py', '../_base_/backbones/biformer-s.py']
model = dict(backbone=_base_.backbone, neck=dict(in_channels=[64, 128, 256, 512]))
