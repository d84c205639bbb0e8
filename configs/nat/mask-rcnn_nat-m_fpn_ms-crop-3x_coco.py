_base_ = './mask-rcnn_nat-t_fpn_ms-crop-3x_coco.py'
# official NAT-mini ImageNet-1k weights (NAT README)
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth'
model = dict(backbone=dict(arch='mini', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
