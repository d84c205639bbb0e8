# UperNet, ADE20K 640 x 640 crops (2560 x 640 scale), 160k iterations, 8 GPUs x 2 images, AdamW + AMP.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/datasets/ade20k_640x640.py',
    '../schedules/seg_adamw_160k.py', 'mmseg::_base_/default_runtime.py'
]
crop_size = (640, 640)
model = dict(
    pretrained=None,  # the stock ResNet checkpoint; our backbones take init_cfg
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
train_dataloader = dict(batch_size=2)
