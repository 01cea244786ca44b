# Demo-scale scan-route ablation (docs/scan_routes.md): the demo
# configs/demo_upernet_vmamba_shapes.py with local 4x4 windows in the
# cross-scan pattern (local, local transposed, both reversed); nothing else
# changes.
_base_ = ['../demo_upernet_vmamba_shapes.py']
model = dict(backbone=dict(
    scan_routes=(dict(type='local', window=4),
                 dict(type='local', window=4, transpose=True),
                 dict(type='local_rev', window=4),
                 dict(type='local_rev', window=4, transpose=True))))
