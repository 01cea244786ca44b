# UperNet + Vim-Ti on ADE20K, 512x512, 60k iterations, batch 32 (8 x 4 GPUs):
#   tools/dist_train.sh configs/upernet_vim_ti_ade20k.py 4
# Paper (Vim, Table 2): 41.0 mIoU, 13M parameters (official count 12,901,100).
#
# Official setting (seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k
# + seg/scripts/ft_vim_tiny_upernet.sh): block outputs as features, no RoPE,
# no class token, residual NOT in fp32, lr 2e-4, wd 0.1, layer decay 0.92.
# Layer decay reproduces the official EFFECTIVE setting (blocks at full lr,
# see configs/upernet_vim_s_ade20k.py).
_base_ = ['./upernet_vim_s_ade20k.py']
embed_dims = 192
pretrained = 'pretrained/vim_t_midclstok.pth'  # hustvl/Vim-tiny-midclstok
model = dict(
    backbone=dict(
        arch='tiny',
        use_rope=False,
        rope_residual=False,
        feature='hidden',
        residual_in_fp32=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(embed_dim=embed_dims),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=embed_dims),
    auxiliary_head=dict(in_channels=embed_dims))
optim_wrapper = dict(
    optimizer=dict(lr=2e-4, weight_decay=0.1),
    paramwise_cfg=dict(layer_decay_rate=0.92))
