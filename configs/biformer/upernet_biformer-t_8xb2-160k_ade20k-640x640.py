_base_ = ['../_base_/recipes/upernet_8xb2-160k_ade20k-640x640.py', '../_base_/backbones/biformer-t.py']
model = dict(
    backbone=dict(_base_.backbone, n_win=8, drop_path_rate=0.2),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
