_base_ = './mask-rcnn_nat-t_fpn_ms-crop-3x_coco.py'
# official NAT-base ImageNet-1k weights (NAT README)
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5,
                  init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
