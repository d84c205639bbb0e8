# BiFormer-Tiny (bi-level routing attention, topk 1/4/16/global): 64-128-256-512 channels at strides 4-8-16-32.
# 16 x 16 routing regions as the official COCO configs (ADE20K 512 configs use n_win=8). The official dense
# models are S and B; drop path 0.1 here for the shallower T.
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official BiFormer-tiny ImageNet-1k weights (BiFormer README)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHEOoGkgwgQzEDlM/root/content'
backbone = dict(
    _delete_=True, type='BiFormer', arch='tiny', n_win=16, drop_path_rate=0.1, out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='ConvertedPretrained', convert_from='biformer', checkpoint=pretrained,
                  filename='biformer_tiny_in1k.pth'))
