# DiNAT-Tiny (NA / dilated NA alternating): 64-128-256-512 channels at strides 4-8-16-32. COCO dilation schedule
# (28 / 7-14 / 3-5-7 / 3) and drop path 0.2 as the official COCO configs; ADE20K configs switch to
# dilations='ade20k' (16 / 4-8 / 2-3-4 / 2) and drop path 0.3.
custom_imports = dict(imports=['backbones'], allow_failed_imports=False)
backbone = dict(
    _delete_=True, type='DiNAT', arch='tiny', dilations='coco', drop_path_rate=0.2, out_indices=(0, 1, 2, 3))
