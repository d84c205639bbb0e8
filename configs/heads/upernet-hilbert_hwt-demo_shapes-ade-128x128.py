# As upernet-routing_hwt-demo_shapes-ade-128x128.py with two Hilbert-window context blocks (64-token chunks, the
# second shifted) instead of routing attention.
_base_ = '../demo/upernet_hwt-demo_shapes-ade-128x128.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        type='SparseContextUPerHead', context_cfg=dict(mode='hilbert', head_dim=16, window=64, num_blocks=2)))
