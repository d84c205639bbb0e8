_base_ = './upernet_dinat-t_8xb2-160k_ade20k-512x512.py'
model = dict(backbone=dict(arch='mini', drop_path_rate=0.2))
