"""Kernels shared by the backbones, each with a CUDA and a torch backend.

The backend is chosen per call: mamba-ssm / causal-conv1d CUDA kernels for
CUDA tensors when they import, the pure-PyTorch path otherwise.
``MMVIM_SCAN_BACKEND=torch|cuda`` forces one. Nothing here imports the kernel
packages until a CUDA tensor asks for them.
"""
from .causal_conv1d import causal_conv1d, causal_conv1d_torch
from .cross_scan import cross_merge, cross_scan
from .selective_scan import (
                             cuda_kernel_status,
                             resolve_backend,
                             selective_scan,
                             selective_scan_torch,
)

__all__ = [
    'selective_scan', 'selective_scan_torch', 'causal_conv1d',
    'causal_conv1d_torch', 'resolve_backend', 'cuda_kernel_status',
    'cross_scan', 'cross_merge'
]
