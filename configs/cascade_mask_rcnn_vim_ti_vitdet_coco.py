# Cascade Mask R-CNN + Vim-Ti in the ViTDet setting (the Vim paper's COCO
# experiment), 1024 LSJ, ~100 epochs at batch 64 (4 images x 16 GPUs):
#   tools/dist_train.sh configs/cascade_mask_rcnn_vim_ti_vitdet_coco.py 16
# Paper (Vim, Table 3, COCO val): 45.7 box AP / 39.2 mask AP.
#
# Official setting (det/projects/ViTDet/configs/COCO/
# cascade_mask_rcnn_vimdet_t_100ep_adj1.py + mask_rcnn_vimdet.py):
# - backbone: Vim-Ti at 1024, drop path 0.1, RoPE on hidden and residual, no
#   class token, every block a global scan (no windows), the residual stream
#   after block 23 (last_layer_process='add') as the single stride-16 map;
# - SimpleFeaturePyramid (4, 2, 1, 0.5) + max-pool p6, 256 channels, LN;
#   2-conv RPN; three cascade stages (IoU 0.5/0.6/0.7) with 4conv1fc LN box
#   heads; 4-conv LN mask head;
# - AdamW lr 1e-4, wd 0.1, layer decay 0.837 over the 24 blocks (this one did
#   reach the blocks: block k gets 0.837 ** (24 - k)), 184,375 iterations,
#   lr x0.1 at 163,889 and 177,546, 250 warm-up iterations from 0.001 x lr,
#   AMP.
# Weight decay as detectron2 applied it there: pos_embed had none, every other
# parameter (RMSNorm weights, biases, A_log, D, the neck's LN) had 0.1.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::common/lsj-100e_coco-instance.py',
]
custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)

image_size = (1024, 1024)
ln = dict(type='LN2d', eps=1e-6)
# ImageNet weights: the .pth of https://huggingface.co/hustvl/Vim-tiny-midclstok
pretrained = 'pretrained/vim_t_midclstok.pth'


def _box_head(stds):
    return dict(
        type='Shared4Conv1FCBBoxHead', in_channels=256, conv_out_channels=256,
        fc_out_channels=1024, roi_feat_size=7, num_classes=80,
        norm_cfg=ln, reg_class_agnostic=True,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                        target_means=[0., 0., 0., 0.], target_stds=stds),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False,
                      loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))


model = dict(
    data_preprocessor=dict(
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size=image_size,
                             pad_mask=True)]),
    backbone=dict(
        _delete_=True,
        type='Vim',
        arch='tiny',
        img_size=1024,
        out_indices=(23, ),
        feature='residual',
        use_rope=True,
        rope_residual=True,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(_delete_=True, type='SimpleFeaturePyramid', in_channels=192,
              out_channels=256, scale_factors=(4.0, 2.0, 1.0, 0.5),
              num_outs=5, norm_cfg=ln),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=[_box_head([0.1, 0.1, 0.2, 0.2]),
                   _box_head([0.05, 0.05, 0.1, 0.1]),
                   _box_head([0.033, 0.033, 0.067, 0.067])],
        mask_head=dict(norm_cfg=ln)))

# evaluation as ViTDet: longer side resized to 1024 (then padded to 32)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 184375
train_dataloader = dict(batch_size=4, num_workers=4,
                        sampler=dict(type='InfiniteSampler', shuffle=True))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                 max_iters=max_iters, val_interval=20000)
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.1),
    constructor='VimLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.837,
                       no_decay_names=['pos_embed'], no_decay_1d=False))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=250),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[163889, 177546], gamma=0.1),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=20000,
                    max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=64)
