# EXPERIMENTAL: no measured gain over the stock FPN (docs/benchmarks.md, "Heads"); kept for trials on real data.
# HWT-T Mask R-CNN 1x with SparseContextFPN: two Hilbert-window blocks (256-token chunks, second shifted, 4 heads
# of 32 on a 128-wide projection) on P2 / P3.
_base_ = '../hwt/mask-rcnn_hwt-t_fpn_1x_coco.py'
custom_imports = dict(imports=['backbones', 'heads'], allow_failed_imports=False)
model = dict(
    neck=dict(type='SparseContextFPN', context_cfg=dict(mode='hilbert', embed_dims=128, window=256, num_blocks=2)))
