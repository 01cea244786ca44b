# Mask R-CNN + Vim-S + FPN, the common 1x protocol (12 epochs, batch 16 =
# 2 x 8 GPUs, 1333x800 single scale, AdamW lr 1e-4 wd 0.05), for comparison
# with the hierarchical backbones:
#   tools/dist_train.sh configs/mask_rcnn_vim_s_fpn_1x_coco.py 8
# The Vim paper has no number for this protocol (no published reference).
#
# The plain stride-16 blocks 5/11/17/23 (residual stream) become strides
# 4/8/16/32 through mmseg's Feature2Pyramid (the official seg pyramid), then
# a standard FPN. Layer decay 0.9 over the 24 blocks; A_log, D, pos_embed and
# 1-D parameters without weight decay.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)

pretrained = 'pretrained/vim_s_midclstok.pth'  # hustvl/Vim-small-midclstok
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='Vim',
        arch='small',
        img_size=(800, 1344),
        out_indices=(5, 11, 17, 23),
        feature='residual',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=[
        dict(type='mmseg.Feature2Pyramid', embed_dim=384,
             rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
        dict(type='FPN', in_channels=[384] * 4, out_channels=256,
             num_outs=5),
    ])
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05),
    constructor='VimLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.9))
auto_scale_lr = dict(enable=False, base_batch_size=16)
