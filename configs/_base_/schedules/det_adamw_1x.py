# COCO 1x (12 epochs) with the optimizer Swin, NAT and BiFormer trained their detectors with: AdamW lr 1e-4,
# weight decay 0.05 except on norms and relative position biases, AMP, 1000-iteration linear warm-up.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.,  # every norm layer by type: LayerNorm / BatchNorm / GroupNorm
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.),  # HWT
            'rpb': dict(decay_mult=0.),  # NAT / DiNAT / HNT
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
