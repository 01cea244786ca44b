# UperNet + MambaVision-S on ADE20K, 512x512, 160k iterations, batch 16
# (2 x 8 GPUs):  tools/dist_train.sh configs/upernet_mambavision_s_ade20k.py 8
# Official (semantic_segmentation/README): 48.2 mIoU, 84M params.
# The MambaVision-T setting (see upernet_mambavision_t_ade20k.py) with the
# official S values: windows (8, 8, 160, 56), lr 6e-5, 2 images per GPU. The
# configured drop path 0.7 was ignored by the official dense wrapper: the run
# used 0.2, kept here.
_base_ = ['./upernet_mambavision_t_ade20k.py']

pretrained = 'https://huggingface.co/nvidia/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar'  # noqa
model = dict(
    backbone=dict(arch='S', window_size=(8, 8, 160, 56),
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=6e-5))
