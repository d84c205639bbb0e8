# Mask R-CNN + FPN, COCO 1x at high resolution (long side 1600..2048 in training, 2048 x 1280 test), AdamW + AMP.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../datasets/coco_instance_2048.py',
    '../schedules/det_adamw_1x.py', 'mmdet::_base_/default_runtime.py'
]
