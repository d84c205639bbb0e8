_base_ = ['../_base_/recipes/upernet_8xb2-160k_ade20k-640x640.py', '../_base_/backbones/hwt-t.py']
model = dict(
    backbone=dict(_base_.backbone, drop_path_rate=0.3),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
