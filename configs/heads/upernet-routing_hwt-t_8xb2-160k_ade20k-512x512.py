# HWT-T UperNet with SparseContextUPerHead: routing attention (16 x 16-pixel regions, top-4, 8 heads of 32 on a
# 256-wide projection of the 512 channels) on the fused stride-4 map.
# Compare with ../hwt/upernet_hwt-t_8xb2-160k_ade20k-512x512.py (tools/benchmark.py, same schedule).
_base_ = '../hwt/upernet_hwt-t_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        type='SparseContextUPerHead', context_cfg=dict(mode='routing', embed_dims=256, region_size=16, topk=4)))
