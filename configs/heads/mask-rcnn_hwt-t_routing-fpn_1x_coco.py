# EXPERIMENTAL: no measured gain over the stock FPN (docs/benchmarks.md, "Heads"); kept for trials on real data.
# HWT-T Mask R-CNN 1x with SparseContextFPN: routing attention (16 x 16-pixel regions, top-4, 4 heads of 32 on a
# 128-wide projection of the 256 channels) on P2 / P3.
# Compare with ../hwt/mask-rcnn_hwt-t_fpn_1x_coco.py (tools/benchmark.py, same schedule).
_base_ = '../hwt/mask-rcnn_hwt-t_fpn_1x_coco.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    neck=dict(
        type='SparseContextFPN', context_cfg=dict(mode='routing', embed_dims=128, region_size=16, topk=4)))
