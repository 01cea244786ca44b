# Demo-scale scan-route ablation (docs/scan_routes.md): the demo
# configs/demo_upernet_vim_shapes.py with the forward scan along the
# 'snake' route (the backward scan is its reversal); nothing else changes.
_base_ = ['../demo_upernet_vim_shapes.py']
model = dict(backbone=dict(scan_route='snake'))
