_base_ = './mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py'
# official DiNAT-small ImageNet-1k weights (DiNAT README)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.35,
                  init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
