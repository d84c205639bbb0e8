_base_ = './mask-rcnn_hwt-t_fpn_1x_coco.py'
# no official HWT-small ImageNet checkpoint is released (HWT: tiny only): from scratch
model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=None))
