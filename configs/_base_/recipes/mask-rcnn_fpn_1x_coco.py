# Mask R-CNN + FPN, COCO 1x, AdamW + AMP. Configs that inherit this swap in a backbone and the neck's in_channels.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/datasets/coco_instance.py',
    '../schedules/det_adamw_1x.py', 'mmdet::_base_/default_runtime.py'
]
