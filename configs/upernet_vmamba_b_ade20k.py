# UperNet + VMamba-B (base) on ADE20K, 512x512, 160k iterations, batch 16
# (2 x 8 GPUs):  tools/dist_train.sh configs/upernet_vmamba_b_ade20k.py 8
# Official (VMamba README, v2 models): 51.0 mIoU single-scale,
# 51.6 multi-scale, 122M params.
#
# As the official segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-
# 512x512_base.py, this inherits mmseg's Swin-B UperNet config: AdamW lr 6e-5,
# wd 0.01, linear warm-up 1500 iterations then poly to 160k, UPerHead 512
# channels, aux FCN head, whole-image test at (2048, 512). Weight decay is off
# for parameter names containing 'norm' (custom_keys, as the Swin config);
# note that this leaves patch_embed.2 / downsample.3 (LayerNorms without
# 'norm' in the name), A_logs and Ds decayed, exactly as the official run.
_base_ = [
    'mmseg::swin/swin-base-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa
]
custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)

# the ImageNet release, converted on load (classifier dropped, reported)
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='VMamba',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
