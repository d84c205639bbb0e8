# EXPERIMENTAL: no measured gain over the stock FPN (docs/benchmarks.md, "Heads"); kept for trials on real data.
# Quality check of SparseContextFPN on the embedded dataset: the demo Mask R-CNN (same backbone, data, schedule)
# with routing-attention context on P2 / P3. The stock-FPN baseline is ../demo/mask-rcnn_hwt-demo_fpn_shapes-coco.py.
# P2 of a 128 px image is 32 x 32: 8 x 8-pixel regions, each routed to its 4 most related of 16.
_base_ = '../demo/mask-rcnn_hwt-demo_fpn_shapes-coco.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    neck=dict(type='SparseContextFPN', context_cfg=dict(mode='routing', head_dim=16, region_size=8, topk=4)))
