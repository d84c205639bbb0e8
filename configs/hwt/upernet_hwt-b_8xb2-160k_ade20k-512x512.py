_base_ = './upernet_hwt-t_8xb2-160k_ade20k-512x512.py'
# no official HWT-base ImageNet checkpoint is released (HWT: tiny only): from scratch
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=None),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
