# RetinaNet + FPN (P3-P7 from backbone stages 1-3, P6 from the last input), COCO 1x, AdamW + AMP, weight decay 1e-4
# as BiFormer's RetinaNet (after WaveViT).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py', 'mmdet::_base_/datasets/coco_detection.py',
    '../schedules/det_adamw_1x.py', 'mmdet::_base_/default_runtime.py'
]
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
