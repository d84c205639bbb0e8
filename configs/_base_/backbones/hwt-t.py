# HWT-Tiny (Swin-T layout, Hilbert windows of 49 tokens): 96-192-384-768 channels at strides 4-8-16-32.
# `backbone` is read by the configs that inherit this file: `model = dict(backbone=_base_.backbone, ...)`;
# `_delete_` drops the stock ResNet settings. Drop path 0.2 as Swin-T on COCO (configs for ADE20K use 0.3).
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official HWT-tiny ImageNet-1k weights (Hilbert-Local-Attention README; a Google Drive page: download it by hand)
pretrained = 'https://drive.google.com/file/d/1utPyBWCc-wKIg7GMdLuvB940Zw2_2BKx/view'
backbone = dict(
    _delete_=True, type='HWT', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='ConvertedPretrained', convert_from='hwt', checkpoint=pretrained,
                  filename='hwt_tiny_224.pth'))
