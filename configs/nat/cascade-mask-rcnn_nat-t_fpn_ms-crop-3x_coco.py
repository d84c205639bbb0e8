# Reference: NAT-T, official (4conv1fc GIoU heads): 51.4 box AP / 44.5 mask AP.
_base_ = ['../_base_/recipes/cascade-mask-rcnn_fpn_ms-crop-3x_coco.py', '../_base_/backbones/nat-t.py']
model = dict(backbone=_base_.backbone, neck=dict(in_channels=[64, 128, 256, 512]))
