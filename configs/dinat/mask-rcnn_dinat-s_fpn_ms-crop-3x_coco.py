_base_ = './mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py'
model = dict(backbone=dict(arch='small', drop_path_rate=0.35), neck=dict(in_channels=[96, 192, 384, 768]))
