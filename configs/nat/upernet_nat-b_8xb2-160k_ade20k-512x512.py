_base_ = './upernet_nat-t_8xb2-160k_ade20k-512x512.py'
# official NAT-base ImageNet-1k weights (NAT README)
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
