# Reference: BiFormer-S, official: 45.9 box AP.
_base_ = ['../_base_/recipes/retinanet_fpn_1x_coco.py', '../_base_/backbones/biformer-s.py']
model = dict(backbone=_base_.backbone, neck=dict(in_channels=[64, 128, 256, 512]))
