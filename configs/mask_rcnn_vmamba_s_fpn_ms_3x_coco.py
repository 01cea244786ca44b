# Mask R-CNN + VMamba-S (small) + FPN on COCO, 3x (36 epochs) with multi-scale
# training, batch 16 (2 x 8 GPUs):
#   tools/dist_train.sh configs/mask_rcnn_vmamba_s_fpn_ms_3x_coco.py 8
# Official (VMamba README, v2 models): 49.9 box AP / 44.2 mask AP.
# As the official detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_small_ms_3x.py:
# the schedule of the VMamba-T 3x config with the small backbone.
_base_ = ['./mask_rcnn_vmamba_t_fpn_ms_3x_coco.py']

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
