# Quality check of SparseContextUPerHead on the embedded dataset: the demo UperNet (same backbone, data, schedule)
# with routing-attention context on the fused stride-4 map.
# Stock baseline: ../demo/upernet_hwt-demo_shapes-ade-128x128.py.
_base_ = '../demo/upernet_hwt-demo_shapes-ade-128x128.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        type='SparseContextUPerHead', context_cfg=dict(mode='routing', head_dim=16, region_size=8, topk=4)))
