# Mask R-CNN + VMamba-S (small) + FPN on COCO, 1x (12 epochs), batch 16
# (2 x 8 GPUs):  tools/dist_train.sh configs/mask_rcnn_vmamba_s_fpn_1x_coco.py 8
# Official (VMamba README, v2 models): 48.7 box AP / 43.7 mask AP (70M params).
#
# As the official detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_small.py,
# this inherits mmdet's Swin-T Mask R-CNN 1x config: AdamW lr 1e-4, wd 0.05,
# 1000 warm-up iterations, steps at epochs 8 and 11, single scale
# (1333, 800); weight decay off for names containing 'norm' (custom_keys, as
# the Swin config; A_logs/Ds and the patch-embed/downsample LayerNorms are
# decayed, exactly as the official run).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)

# the ImageNet release, converted on load (classifier dropped, reported)
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='VMamba',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
