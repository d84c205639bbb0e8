# Semantic FPN, ADE20K 512 x 512, 80k iterations, 8 GPUs x 4 images, AdamW + AMP, cosine (the BiFormer recipe).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    '../schedules/seg_adamw_80k.py', 'mmseg::_base_/default_runtime.py'
]
crop_size = (512, 512)
model = dict(
    pretrained=None,  # the stock ResNet checkpoint; our backbones take init_cfg
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=150))
train_dataloader = dict(batch_size=4)
