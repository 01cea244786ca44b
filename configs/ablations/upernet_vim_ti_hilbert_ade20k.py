# Scan-route ablation: configs/upernet_vim_ti_ade20k.py with the forward scan
# along a (generalised) Hilbert curve; the backward scan is its reversal.
# Nothing else changes: the official Vim-Ti checkpoint loads as before.
# See docs/scan_routes.md.
_base_ = ['../upernet_vim_ti_ade20k.py']
model = dict(backbone=dict(scan_route='hilbert'))
