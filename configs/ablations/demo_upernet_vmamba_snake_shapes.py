# Demo-scale scan-route ablation (docs/scan_routes.md): the demo
# configs/demo_upernet_vmamba_shapes.py with the four SS2D routes snake,
# snake_column and their reversals; nothing else changes.
_base_ = ['../demo_upernet_vmamba_shapes.py']
model = dict(backbone=dict(
    scan_routes=('snake', 'snake_column', 'snake_rev', 'snake_column_rev')))
