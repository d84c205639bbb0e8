# EXPERIMENTAL: no measured gain over the stock FPN (docs/benchmarks.md, "Heads"); kept for trials on real data.
# As mask-rcnn_hwt-demo_routing-fpn_shapes-coco.py with two Hilbert-window context blocks (64-token chunks, the
# second shifted) instead of routing attention.
_base_ = '../demo/mask-rcnn_hwt-demo_fpn_shapes-coco.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    neck=dict(
        type='SparseContextFPN', context_cfg=dict(mode='hilbert', head_dim=16, window=64, num_blocks=2)))
