# Demo-scale scan-route ablation (docs/scan_routes.md): the demo
# configs/demo_upernet_vmamba_shapes.py with atrous step-2 sub-grids in the
# cross-scan pattern (atrous, atrous transposed, both reversed); nothing
# else changes.
_base_ = ['../demo_upernet_vmamba_shapes.py']
model = dict(backbone=dict(
    scan_routes=(dict(type='atrous', step=2),
                 dict(type='atrous', step=2, transpose=True),
                 dict(type='atrous_rev', step=2),
                 dict(type='atrous_rev', step=2, transpose=True))))
