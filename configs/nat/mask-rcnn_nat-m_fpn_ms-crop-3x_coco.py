_base_ = './mask-rcnn_nat-t_fpn_ms-crop-3x_coco.py'
model = dict(backbone=dict(arch='mini', drop_path_rate=0.2))
