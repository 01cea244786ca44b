"""Kernels shared by the backbones: compiled backends and a torch one.

The backend is chosen per call (:mod:`mmvim.ops.dispatch`): mamba-ssm /
causal-conv1d CUDA kernels, else mmvim's Triton kernels, for CUDA tensors
and mmvim's compiled CPU scan (``mmvim._ext``) for CPU tensors when they
import, the pure-PyTorch path otherwise.
``MMVIM_SCAN_BACKEND=auto|torch|cpu|cuda|triton`` forces one. Nothing here
imports a kernel package (or triton) until a call asks for it.
"""
from .causal_conv1d import causal_conv1d, causal_conv1d_torch
from .cross_scan import cross_merge, cross_scan
from .dispatch import cuda_kernel_status, kernel_status, resolve_backend
from .routes import (
    ROUTES,
    ScanRoutes,
    known_routes,
    register_route,
    route_merge,
    route_order,
    route_scan,
)
from .selective_scan import (
    scan_reverses_in_kernel,
    selective_scan,
    selective_scan_torch,
)

__all__ = [
    'selective_scan', 'selective_scan_torch', 'scan_reverses_in_kernel',
    'causal_conv1d',
    'causal_conv1d_torch', 'resolve_backend', 'cuda_kernel_status',
    'kernel_status',
    'cross_scan', 'cross_merge', 'ROUTES', 'ScanRoutes', 'known_routes',
    'register_route', 'route_order', 'route_scan', 'route_merge'
]
