# BiFormer-Small, the headline dense model: 64-128-256-512 channels at strides 4-8-16-32. n_win 16 and drop path
# 0.2 as the official Mask R-CNN / RetinaNet configs (ADE20K: n_win 8, UperNet 0.3, Semantic FPN 0.15).
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official BiFormer-small ImageNet-1k weights (BiFormer README)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content'
backbone = dict(
    _delete_=True, type='BiFormer', arch='small', n_win=16, drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='ConvertedPretrained', convert_from='biformer', checkpoint=pretrained,
                  filename='biformer_small_in1k.pth'))
