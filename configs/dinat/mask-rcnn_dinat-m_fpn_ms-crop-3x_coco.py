_base_ = './mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py'
# official DiNAT-mini ImageNet-1k weights (DiNAT README)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'
model = dict(backbone=dict(arch='mini', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
