# Mask R-CNN + FPN, COCO 3x with multi-scale + crop augmentation, AdamW + AMP (the Swin / NAT / DiNAT 3x recipe).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../datasets/coco_instance_ms-crop.py',
    '../schedules/det_adamw_3x.py', 'mmdet::_base_/default_runtime.py'
]
