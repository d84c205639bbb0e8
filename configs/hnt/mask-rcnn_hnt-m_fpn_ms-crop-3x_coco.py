_base_ = './mask-rcnn_hnt-t_fpn_ms-crop-3x_coco.py'
# official HNT-mini ImageNet-1k weights (Hilbert-Local-Attention README; a Google Drive page: download it by hand)
pretrained = 'https://drive.google.com/file/d/1HrUmo-Tsk7J5bq2KBtdzw1cXzlZuvS_V/view'
model = dict(
    backbone=dict(arch='mini', drop_path_rate=0.2,
                  init_cfg=dict(checkpoint=pretrained, filename='hnt_mini.pth')))
