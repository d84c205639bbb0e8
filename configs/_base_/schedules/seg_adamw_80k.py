# ADE20K Semantic FPN 80k as BiFormer (after UniFormer / PVT, 8 GPUs x 4 images): AdamW lr 2e-4, weight decay
# 1e-4 except on norms and relative position biases, AMP, 1000-iteration warm-up from 0.1x, cosine decay.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.),
            'rpb': dict(decay_mult=0.),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', eta_min=0.0, begin=1000, end=80000, by_epoch=False)
]
