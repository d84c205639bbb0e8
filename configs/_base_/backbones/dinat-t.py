# DiNAT-Tiny (NA / dilated NA alternating): 64-128-256-512 channels at strides 4-8-16-32. COCO dilation schedule
# (28 / 7-14 / 3-5-7 / 3) and drop path 0.2 as the official COCO configs; ADE20K configs switch to
# dilations='ade20k' (16 / 4-8 / 2-3-4 / 2) and drop path 0.3.
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official DiNAT-tiny ImageNet-1k weights (DiNAT README)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth'
backbone = dict(
    _delete_=True, type='DiNAT', arch='tiny', dilations='coco', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='ConvertedPretrained', convert_from='dinat', checkpoint=pretrained))
