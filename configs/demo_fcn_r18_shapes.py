# Smallest real training run: FCN (dilated ResNet-18 at 1/4 width, output
# stride 8) on the embedded demo scenes, CPU friendly (a few minutes on 2
# cores). Run by `make demo`. The Vim/UperNet demo replaces it once the Vim
# backbone lands.
_base_ = [
    'mmseg::_base_/models/fcn_r50-d8.py',
    './_base_/datasets/demo_shapes.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
]
custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)

crop_size = (128, 128)
num_classes = 4
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=18, stem_channels=16, base_channels=16,
                  norm_cfg=norm_cfg),
    decode_head=dict(in_channels=128, channels=64, num_classes=num_classes,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=32,
                        num_classes=num_classes, norm_cfg=norm_cfg))

max_iters = 600
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999),
                   weight_decay=0.01, _delete_=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0,
         end=50),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=50, end=max_iters,
         by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval=max_iters))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
