_base_ = ['../_base_/recipes/mask-rcnn_fpn_1x_coco-2048.py', '../_base_/backbones/nat-t.py']
model = dict(backbone=_base_.backbone, neck=dict(in_channels=[64, 128, 256, 512]))
