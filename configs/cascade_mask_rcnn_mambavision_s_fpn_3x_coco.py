# Cascade Mask R-CNN + MambaVision-S + FPN on COCO, 3x, batch 16 (2 x 8 GPUs):
#   tools/dist_train.sh configs/cascade_mask_rcnn_mambavision_s_fpn_3x_coco.py 8
# Official (object_detection/README): 52.3 box AP / 45.2 mask AP, 108M params.
# The MambaVision-T 3x setting with the S backbone (configured drop path
# 0.3, ignored by the official dense wrapper: the run used 0.2).
_base_ = ['./cascade_mask_rcnn_mambavision_t_fpn_3x_coco.py']

pretrained = 'https://huggingface.co/nvidia/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar'  # noqa
model = dict(
    backbone=dict(arch='S',
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

