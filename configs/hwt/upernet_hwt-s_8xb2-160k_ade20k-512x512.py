_base_ = './upernet_hwt-t_8xb2-160k_ade20k-512x512.py'
# no official HWT-small ImageNet checkpoint is released (HWT: tiny only): from scratch
model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=None))
