# UperNet + a reduced VMamba on the embedded demo scenes
# (tools/make_demo_data.py; ADE20K layout, 4 classes, 128x128), trained from
# scratch on a 2-core CPU in a few minutes: the VMamba twin of
# configs/demo_upernet_vim_shapes.py (same data, pipelines, batch, schedule,
# optimiser settings and seed), used by the scan-route ablation
# (docs/scan_routes.md).
#
# It inherits the real configs/upernet_vmamba_t_ade20k.py (model, heads,
# metric, AdamW wrapper with the 'norm' no-decay rule) and shrinks only what
# a CPU needs: VMamba width 32 / depths (1, 1, 2, 1), UPerHead width, image
# size, batch, iterations, learning rate, and no pretrained weights.
_base_ = ['./upernet_vmamba_t_ade20k.py']

dataset_type = 'DemoShapesDataset'
data_root = 'data/demo_shapes'
crop_size = (128, 128)
num_classes = 4
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
dims = 32
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(dims=dims, depths=(1, 1, 2, 1), drop_path_rate=0.0,
                  init_cfg=None),
    decode_head=dict(in_channels=[dims, dims * 2, dims * 4, dims * 8],
                     channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=dims * 4, channels=32,
                        num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=2, persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 800
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=50),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, by_epoch=False, begin=50,
         end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval=max_iters, save_best=None, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
