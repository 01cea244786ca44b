# Scan-route ablation: configs/upernet_vmamba_t_ade20k.py with a generalised
# Hilbert curve in the cross-scan pattern: hilbert, hilbert on the
# transposed grid and their reversals. K stays 4, so the official VMamba-T
# checkpoint loads as before. See docs/scan_routes.md.
_base_ = ['../upernet_vmamba_t_ade20k.py']
model = dict(backbone=dict(
    scan_routes=('hilbert', dict(type='hilbert', transpose=True),
                 'hilbert_rev', dict(type='hilbert_rev', transpose=True))))
