# UperNet, ADE20K 512 x 512, 160k iterations, 8 GPUs x 2 images, AdamW + AMP (the Swin / NAT / BiFormer recipe).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    '../schedules/seg_adamw_160k.py', 'mmseg::_base_/default_runtime.py'
]
crop_size = (512, 512)
model = dict(
    pretrained=None,  # the stock ResNet checkpoint; our backbones take init_cfg
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
train_dataloader = dict(batch_size=2)
