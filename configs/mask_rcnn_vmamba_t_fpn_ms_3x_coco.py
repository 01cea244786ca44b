# Mask R-CNN + VMamba-T (tiny) + FPN on COCO, 3x (36 epochs) with multi-scale
# training, batch 16 (2 x 8 GPUs):
#   tools/dist_train.sh configs/mask_rcnn_vmamba_t_fpn_ms_3x_coco.py 8
# Official (VMamba README, v2 models): 48.8 box AP / 43.7 mask AP.
#
# As the official detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_tiny_ms_3x.py:
# the 1x setting with DETR-style multi-scale training (short side 480-800,
# max 1333, or a 384x600 crop branch) and steps at epochs 27 and 33.
_base_ = ['./mask_rcnn_vmamba_t_fpn_1x_coco.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize',
                  scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333),
                          (608, 1333), (640, 1333), (672, 1333), (704, 1333),
                          (736, 1333), (768, 1333), (800, 1333)],
                  keep_ratio=True)],
            [dict(type='RandomChoiceResize',
                  scales=[(400, 1333), (500, 1333), (600, 1333)],
                  keep_ratio=True),
             dict(type='RandomCrop', crop_type='absolute_range',
                  crop_size=(384, 600), allow_negative_crop=True),
             dict(type='RandomChoiceResize',
                  scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333),
                          (608, 1333), (640, 1333), (672, 1333), (704, 1333),
                          (736, 1333), (768, 1333), (800, 1333)],
                  keep_ratio=True)],
        ]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[27, 33], gamma=0.1)
]
