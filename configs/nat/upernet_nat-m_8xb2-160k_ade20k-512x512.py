_base_ = './upernet_nat-t_8xb2-160k_ade20k-512x512.py'
# official NAT-mini ImageNet-1k weights (NAT README)
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth'
model = dict(backbone=dict(arch='mini', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
