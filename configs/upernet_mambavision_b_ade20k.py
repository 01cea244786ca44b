# UperNet + MambaVision-B on ADE20K, 512x512, 160k iterations, batch 16
# (1 x 16 GPUs):  tools/dist_train.sh configs/upernet_mambavision_b_ade20k.py 16
# Official (semantic_segmentation/README): 49.1 mIoU, 126M params.
# The MambaVision-T setting (see upernet_mambavision_t_ade20k.py) with the
# official B values: windows (8, 8, 64, 32), lr 5e-5, 1 images per GPU. The
# configured drop path 0.4 was ignored by the official dense wrapper: the run
# used 0.2, kept here.
_base_ = ['./upernet_mambavision_t_ade20k.py']

pretrained = 'https://huggingface.co/nvidia/MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar'  # noqa
model = dict(
    backbone=dict(arch='B', window_size=(8, 8, 64, 32),
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
train_dataloader = dict(batch_size=1)
