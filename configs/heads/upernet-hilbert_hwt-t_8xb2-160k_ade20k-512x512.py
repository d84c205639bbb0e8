# HWT-T UperNet with SparseContextUPerHead: two Hilbert-window blocks (256-token chunks, second shifted, 8 heads of
# 32 on a 256-wide projection) on the fused stride-4 map.
_base_ = '../hwt/upernet_hwt-t_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        type='SparseContextUPerHead',
        context_cfg=dict(mode='hilbert', embed_dims=256, window=256, num_blocks=2)))
