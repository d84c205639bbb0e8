# UperNet, HWT-T, 40k iterations at 512x512 on COCO images with semantic labels for the 80 thing classes, made from
# the instance annotations by tools/coco_to_semseg.py (0 = no object, ignored via reduce_zero_label; crowd 255).
# The HWT-T ADE20K recipe with the dataset swapped; ../shared/data/tiny_coco converts in a second:
#   python tools/coco_to_semseg.py ../shared/data/tiny_coco data/coco_things
_base_ = './upernet_hwt-t_8xb2-160k_ade20k-512x512.py'

data_root = 'data/coco_things'
max_iters = 40000
num_classes = 80
coco_things = dict(
    type='BaseSegDataset',
    data_root=data_root,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True,
    metainfo=dict(classes=(
        'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
        'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
        'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
        'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
        'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
        'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
        'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
        'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
        'teddy bear', 'hair drier', 'toothbrush')))

model = dict(decode_head=dict(num_classes=num_classes), auxiliary_head=dict(num_classes=num_classes))
train_dataloader = dict(dataset=dict(
    coco_things, _delete_=True, data_prefix=dict(img_path='images/train2017', seg_map_path='annotations/train2017'),
    pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(dataset=dict(
    coco_things, _delete_=True, data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017'),
    pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=4000)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False)
]
default_hooks = dict(checkpoint=dict(interval=4000))
