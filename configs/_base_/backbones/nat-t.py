# NAT-Tiny (7x7 neighbourhood attention): 64-128-256-512 channels at strides 4-8-16-32.
# Drop path 0.2 as the official COCO configs (ADE20K configs use 0.3).
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official NAT-tiny ImageNet-1k weights (NAT README)
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth'
backbone = dict(
    _delete_=True, type='NAT', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='ConvertedPretrained', convert_from='nat', checkpoint=pretrained))
