# High-resolution UperNet, ADE20K 1024 x 1024 crops (1024 short side), 160k iterations, 8 GPUs x 2 images,
# AdamW + AMP, sliding-window test with 1024 x 1024 windows and a 768 stride.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', '../datasets/ade20k_1024x1024.py',
    '../schedules/seg_adamw_160k.py', 'mmseg::_base_/default_runtime.py'
]
crop_size = (1024, 1024)
model = dict(
    pretrained=None,  # the stock ResNet checkpoint; our backbones take init_cfg
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(768, 768)))
train_dataloader = dict(batch_size=2)
