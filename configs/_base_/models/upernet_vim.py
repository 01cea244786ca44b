# UperNet on a plain Vim: the official BEiT-style pyramid (deconv x2 / deconv
# / identity / maxpool, strides 4-32) is mmseg's Feature2Pyramid; UPerHead and
# the auxiliary FCN head as the official seg configs.
_base_ = ['mmseg::_base_/models/upernet_r50.py']
custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
embed_dims = 384
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='Vim',
        arch='small',
        img_size=512,
        patch_size=16,
        out_indices=(5, 11, 17, 23),
        drop_path_rate=0.1),  # VisionMamba's default, kept by the seg code
    neck=dict(type='Feature2Pyramid', embed_dim=embed_dims,
              rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[embed_dims] * 4,
        channels=embed_dims,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=embed_dims,
        in_index=2,
        channels=256,
        num_convs=1,
        norm_cfg=norm_cfg,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                         loss_weight=0.4)))
