_base_ = './upernet_dinat-t_8xb2-160k_ade20k-512x512.py'
# official DiNAT-mini ImageNet-1k weights (DiNAT README)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'
model = dict(backbone=dict(arch='mini', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
