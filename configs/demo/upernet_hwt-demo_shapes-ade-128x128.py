# UperNet with a small HWT on the embedded shapes dataset (tools/make_demo_data.py, ADE20K layout), sized to train in
# a few minutes on a 2-core CPU (`make demo`). Differences from the stock config: backbone, narrower heads, 5 classes
# (labels 1..5 on disk, 0 = "other" is ignored by reduce_zero_label as in ADE20K), 128 px crops without photometric
# distortion (hue is part of what defines a class here), an iteration schedule with AdamW. mmseg's ADE20KDataset
# only accepts subsets of ADE20K's 150 class names, so the same on-disk layout is read with BaseSegDataset and the
# ADE20K file conventions (.jpg images, .png labels, reduce_zero_label).
_base_ = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)

data_root = 'data/demo/ade'
dataset_type = 'BaseSegDataset'
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle', 'star'),
    palette=[(120, 120, 120), (220, 20, 60), (0, 160, 80), (30, 90, 220), (230, 190, 20)])
num_classes = 5
crop_size = (128, 128)
max_iters = 400
dims = [32, 64, 128, 256]

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='HWT',
        arch=dict(embed_dims=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7, mlp_ratio=4),
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0),
    decode_head=dict(in_channels=dims, channels=64, num_classes=num_classes),
    auxiliary_head=dict(in_channels=dims[2], channels=32, num_classes=num_classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
# train and val read the same folders (train: images/training, val: images/validation via the stock data_prefix)
demo_dataset = dict(type=dataset_type, img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
                    data_root=data_root, metainfo=metainfo)
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(demo_dataset, pipeline=train_pipeline))
# one image per test batch, as mmseg's stock configs: images keep their own sizes at test time and
# SegDataPreProcessor refuses a batch of mixed sizes
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(demo_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=1e-5, power=1.0, by_epoch=False, begin=30, end=max_iters)
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=200, max_keep_ckpts=2))
randomness = dict(seed=0)
visualizer = dict(alpha=0.5)  # --show-dir drawings: the image stays visible under the predicted labels
