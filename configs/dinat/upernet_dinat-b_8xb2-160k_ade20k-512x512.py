_base_ = './upernet_dinat-t_8xb2-160k_ade20k-512x512.py'
# official DiNAT-base ImageNet-1k weights (DiNAT README)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
