_base_ = ['../_base_/recipes/mask-rcnn_fpn_1x_coco.py', '../_base_/backbones/biformer-t.py']
model = dict(backbone=_base_.backbone, neck=dict(in_channels=[64, 128, 256, 512]))
