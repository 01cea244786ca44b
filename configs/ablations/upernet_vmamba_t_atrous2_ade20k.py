# Scan-route ablation: configs/upernet_vmamba_t_ade20k.py with atrous (skip)
# sampling of step 2 (EfficientVMamba's ES2D sub-grids, here all four one
# after another) in the cross-scan pattern: atrous, atrous transposed and
# their reversals. K stays 4, so the official VMamba-T checkpoint loads as
# before. See docs/scan_routes.md.
_base_ = ['../upernet_vmamba_t_ade20k.py']
model = dict(backbone=dict(
    scan_routes=(dict(type='atrous', step=2),
                 dict(type='atrous', step=2, transpose=True),
                 dict(type='atrous_rev', step=2),
                 dict(type='atrous_rev', step=2, transpose=True))))
