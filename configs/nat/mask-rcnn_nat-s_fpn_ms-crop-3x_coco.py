_base_ = './mask-rcnn_nat-t_fpn_ms-crop-3x_coco.py'
# official NAT-small ImageNet-1k weights (NAT README)
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.35,
                  init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
