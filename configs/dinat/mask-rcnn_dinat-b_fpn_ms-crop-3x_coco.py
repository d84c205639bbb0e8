_base_ = './mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py'
# official DiNAT-base ImageNet-1k weights (DiNAT README)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5,
                  init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
