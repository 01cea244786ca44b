# Mask R-CNN + MambaVision-T + FPN on COCO, 1x (12 epochs), batch 16
# (2 x 8 GPUs):  tools/dist_train.sh configs/mask_rcnn_mambavision_t_fpn_1x_coco.py 8
# Beyond the official release (which has Cascade Mask R-CNN 3x only): the
# protocol of configs/mask_rcnn_vmamba_t_fpn_1x_coco.py (mmdet's Swin-T 1x:
# AdamW 1e-4, wd 0.05, 'norm' without decay, single scale (1333, 800)) so
# the three backbones compare on one protocol. No published number.
# Windows and drop path as the official MambaVision detection runs.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)

pretrained = 'https://huggingface.co/nvidia/MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='T',
        window_size=(8, 8, 112, 56),
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[80, 160, 320, 640]))
