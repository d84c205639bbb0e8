_base_ = ['../_base_/recipes/mask-rcnn_fpn_ms-crop-3x_coco.py', '../_base_/backbones/biformer-s.py']
model = dict(backbone=_base_.backbone, neck=dict(in_channels=[64, 128, 256, 512]))
