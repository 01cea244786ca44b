# Scan-route ablation: configs/upernet_vmamba_t_ade20k.py with local 4x4
# windows (LocalMamba) in the cross-scan pattern: local, local transposed
# (windows and tokens column-major) and their reversals. K stays 4, so the
# official VMamba-T checkpoint loads as before. See docs/scan_routes.md.
_base_ = ['../upernet_vmamba_t_ade20k.py']
model = dict(backbone=dict(
    scan_routes=(dict(type='local', window=4),
                 dict(type='local', window=4, transpose=True),
                 dict(type='local_rev', window=4),
                 dict(type='local_rev', window=4, transpose=True))))
