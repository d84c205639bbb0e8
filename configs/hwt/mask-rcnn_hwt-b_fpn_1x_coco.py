_base_ = './mask-rcnn_hwt-t_fpn_1x_coco.py'
# no official HWT-base ImageNet checkpoint is released (HWT: tiny only): from scratch
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=None),
    neck=dict(in_channels=[128, 256, 512, 1024]))
