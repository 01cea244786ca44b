# Demo-scale scan-route ablation (docs/scan_routes.md): the demo
# configs/demo_upernet_vmamba_shapes.py with the Hilbert curve in the
# cross-scan pattern (hilbert, hilbert transposed, both reversed); nothing
# else changes.
_base_ = ['../demo_upernet_vmamba_shapes.py']
model = dict(backbone=dict(
    scan_routes=('hilbert', dict(type='hilbert', transpose=True),
                 'hilbert_rev', dict(type='hilbert_rev', transpose=True))))
