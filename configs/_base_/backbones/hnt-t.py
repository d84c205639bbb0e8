# HNT-Tiny (NAT-T layout, 1D neighbourhood attention of 49 tokens on the Hilbert sequence): 64-128-256-512
# channels at strides 4-8-16-32. Drop path 0.2 as NAT-T on COCO (ADE20K configs use 0.3).
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
# official HNT-tiny ImageNet-1k weights (Hilbert-Local-Attention README; a Google Drive page: download it by hand)
pretrained = 'https://drive.google.com/file/d/1j-JlRj4D9gqx1lMyBp5sB8nThS7LCykS/view'
# The official `nat1D_tiny` passes kernel 7 (ours: 49, the paper's): if the file holds kernel-7 tables, loading stops
# naming them; use arch=dict(HNT tiny, kernel_size=7) for the official network or resize_bias_tables=True.
backbone = dict(
    _delete_=True, type='HNT', arch='tiny', drop_path_rate=0.2, out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='ConvertedPretrained', convert_from='hnt', checkpoint=pretrained,
                  filename='hnt_tiny.pth'))
