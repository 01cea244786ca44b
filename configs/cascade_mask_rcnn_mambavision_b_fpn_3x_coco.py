# Cascade Mask R-CNN + MambaVision-B + FPN on COCO, 3x, batch 16 (2 x 8 GPUs):
#   tools/dist_train.sh configs/cascade_mask_rcnn_mambavision_b_fpn_3x_coco.py 8
# Official (object_detection/README): 52.8 box AP / 45.7 mask AP, 145M params.
# The MambaVision-T 3x setting with the B backbone (configured drop path
# 0.5, ignored by the official dense wrapper: the run used 0.2).
_base_ = ['./cascade_mask_rcnn_mambavision_t_fpn_3x_coco.py']

pretrained = 'https://huggingface.co/nvidia/MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar'  # noqa
model = dict(
    backbone=dict(arch='B',
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=2e-4))  # B trains at 2e-4
