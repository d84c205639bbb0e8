# Mask R-CNN + FPN, HWT-T backbone, 1x schedule on COCO: the stock mmdet config with the backbone swapped and
# Swin's AdamW recipe (no weight decay on the relative position bias tables and norms).
# Point it at another copy of COCO by changing data_root alone.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official HWT-tiny ImageNet-1k weights (Hilbert-Local-Attention README; a Google Drive page: download it by hand)
pretrained = 'https://drive.google.com/file/d/1utPyBWCc-wKIg7GMdLuvB940Zw2_2BKx/view'

data_root = 'data/coco/'

model = dict(
    backbone=dict(
        _delete_=True,
        type='HWT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        with_cp=False,
        init_cfg=dict(
            type='ConvertedPretrained', convert_from='hwt',
            checkpoint=pretrained, filename='hwt_tiny_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# data_root restated where the stock config baked 'data/coco/' in
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='AmpOptimWrapper',  # on a CPU-only machine: --cfg-options optim_wrapper.type=OptimWrapper
    loss_scale='dynamic',
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
