# UperNet, HWT-T backbone, 160k iterations on ADE20K at 512x512 (8 GPUs x 2 images): the stock mmseg config with
# the backbone swapped and Swin's AdamW recipe (no weight decay on the relative position bias tables and norms).
# Point it at another copy of ADE20K by changing data_root alone.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official HWT-tiny ImageNet-1k weights (Hilbert-Local-Attention README; a Google Drive page: download it by hand)
pretrained = 'https://drive.google.com/file/d/1utPyBWCc-wKIg7GMdLuvB940Zw2_2BKx/view'

data_root = 'data/ade/ADEChallengeData2016'

model = dict(
    pretrained=None,  # the stock ResNet checkpoint; HWT takes init_cfg
    backbone=dict(
        _delete_=True,
        type='HWT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        with_cp=False,
        init_cfg=dict(
            type='ConvertedPretrained', convert_from='hwt',
            checkpoint=pretrained, filename='hwt_tiny_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=1, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',  # on a CPU-only machine: --cfg-options optim_wrapper.type=OptimWrapper
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
