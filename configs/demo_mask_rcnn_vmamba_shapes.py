# The detection demo: Mask R-CNN + a reduced VMamba + FPN on the embedded
# demo scenes in COCO layout (tools/make_demo_data.py --task det; 3 classes,
# 128x128), trained from scratch on a 2-core CPU by `make demo-det`.
#
# It inherits the real configs/mask_rcnn_vmamba_t_fpn_1x_coco.py (Mask
# R-CNN heads, CocoMetric bbox/segm, AdamW wrapper with the 'norm' no-decay
# rule) and shrinks only what a CPU needs: VMamba width 32 / depths
# (1, 1, 2, 1), FPN and head widths, image size, batch, iterations, lr, the
# training proposals and sampled RoIs (a 128x128 scene holds a few objects;
# with mmdet's 1000 proposals (of 2000 before NMS) and 512 RoIs per image an
# iteration took 1.36 CPU-seconds on one thread, with 200 (of 500) and 128
# RoIs 0.64; the backbone's forward is 0.07-0.09 of either), and no
# pretrained weights.
#
# 300 iterations reach box AP 0.59-0.61 / mask AP 0.62 on the 40 validation
# scenes with `make demo-det` (0.613 / 0.618 and 0.593 / 0.618 in two runs;
# 0.583 / 0.617 without data-loader workers, whose augmentation draws
# differ; untrained: 0.000 / 0.000). Time: see docs/get_started.md.
_base_ = ['./mask_rcnn_vmamba_t_fpn_1x_coco.py']

num_classes = 3
model = dict(
    backbone=dict(dims=32, depths=(1, 1, 2, 1), drop_path_rate=0.0,
                  init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64,
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256,
                       num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64,
                       num_classes=num_classes)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=300),
                  rcnn=dict(max_per_img=20)))

data_root = 'data/demo_shapes_coco/'
metainfo = dict(classes=('disc', 'square', 'triangle'),
                palette=[(230, 90, 40), (60, 200, 80), (50, 110, 230)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.5),
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 filter_cfg=dict(filter_empty_gt=True, min_size=4),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=50),
    dict(type='CosineAnnealingLR', eta_min=1e-5, begin=50, end=max_iters,
         by_epoch=False),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                 max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
