# Scan-route ablation: configs/upernet_vmamba_t_ade20k.py with the four SS2D
# routes snake, snake_column and their reversals instead of the cross scan
# (raster, column and their reversals). K stays 4, so the official VMamba-T
# checkpoint loads as before. See docs/scan_routes.md.
_base_ = ['../upernet_vmamba_t_ade20k.py']
model = dict(backbone=dict(
    scan_routes=('snake', 'snake_column', 'snake_rev', 'snake_column_rev')))
