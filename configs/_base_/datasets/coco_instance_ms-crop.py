# COCO instances with the multi-scale + random-crop training augmentation of the 3x schedules of Swin / NAT / DiNAT
# (from DETR / Sparse R-CNN): short side 480..800 (long <= 1333), or resize 400..600, crop 384..600, resize again.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

ms_crop_scales = [(short, 1333) for short in range(480, 801, 32)]  # short side 480, 512, ..., 800
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_crop_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_crop_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
