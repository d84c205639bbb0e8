# Cascade Mask R-CNN + FPN (mmdet's stock heads), COCO 3x with multi-scale + crop augmentation, AdamW + AMP.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py', '../datasets/coco_instance_ms-crop.py',
    '../schedules/det_adamw_3x.py', 'mmdet::_base_/default_runtime.py'
]
