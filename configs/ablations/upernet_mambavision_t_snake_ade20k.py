# Scan-route ablation: configs/upernet_mambavision_t_ade20k.py with the
# tokens of each window scanned along the snake route by the Mamba mixers
# (attention blocks are unaffected). Nothing else changes: the official
# MambaVision-T checkpoint loads as before. See docs/scan_routes.md.
_base_ = ['../upernet_mambavision_t_ade20k.py']
model = dict(backbone=dict(scan_route='snake'))
