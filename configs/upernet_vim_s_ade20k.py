# UperNet + Vim-S on ADE20K, 512x512, 60k iterations, batch 32 (8 x 4 GPUs):
#   tools/dist_train.sh configs/upernet_vim_s_ade20k.py 4
# Paper (Vim, Table 2): 44.9 mIoU, 46M parameters.
#
# Official setting (seg/configs/vim/upernet/upernet_vim_small_24_512_slide_60k
# + seg/scripts/ft_vim_small_upernet.sh): RoPE on hidden and residual, the
# residual stream as features (use_residual_as_feature, last 'add'), class
# token removed, lr 1e-4, wd 0.05, layer decay 0.95 over 24 layers, slide
# test 512/341.
#
# Layer decay: the official constructor matched `backbone.blocks.*`, which Vim
# does not have, so the 24 blocks trained at the full lr and only pos_embed /
# patch_embed were scaled (0.95 ** 25); A_log (2-D) and pos_embed were
# weight-decayed, 1-D parameters and biases were not. decay_blocks=False and
# no_decay_names=[] reproduce that EFFECTIVE setting. For the intended rule
# (blocks decayed, A_log/D/pos_embed without wd) drop those two keys.
_base_ = [
    './_base_/models/upernet_vim.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/schedule_60k_vim.py',
]
crop_size = (512, 512)
# ImageNet weights: download the .pth of
# https://huggingface.co/hustvl/Vim-small-midclstok to this path; it is
# converted on load (middle class-token entry dropped, 14x14 -> 32x32).
pretrained = 'pretrained/vim_s_midclstok.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='small',
        use_rope=True,
        rope_residual=True,
        feature='residual',
        residual_in_fp32=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.95,
                       decay_blocks=False, no_decay_names=[]))
train_dataloader = dict(batch_size=8, num_workers=8)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader
