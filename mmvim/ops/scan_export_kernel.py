"""The selective scan exported as mmvim's compiled kernel: the opt-in
``--scan-op mmvim`` export mode (docs/deploy.md).

By default an exported scan is a ``Loop`` of standard ONNX operators
(:mod:`mmvim.ops.scan_export`), which any runtime runs. Inside
``export_scan_op('mmvim')`` it is instead captured as the torch operator
``mmvim::selective_scan_kernel``, which :mod:`mmvim.deploy.ort_ops`
translates to one ``mmvim.ai::SelectiveScan`` node: mmvim's C++ kernel
(``mmvim/csrc``) built as an onnxruntime custom-op library
(``mmvim/libmmvim_ort_ops.so``). Such a file runs only where that library is
registered (``mmvim.deploy.onnx_session`` does it), 10-20x faster per scan.

The operator takes the kernel's own layout, so the file holds no flips or
layout passes around it:

========== =============================================================
u, delta   (batch, dim, L)
A          (dim, N)
B, C       (dim, N) constant, or (batch, G, L, N) time-varying, G groups
           of dim / G channels (time-major rows of N, as the kernel reads)
D, bias    (dim,) or None; z (batch, dim, L) or None
softplus   bool: step = softplus(delta + bias)
reverse    R ints (R dividing dim) or []: the channels of block r run
           backwards in time when reverse[r] != 0 (VMamba's reversed
           routes, without flipping them)
returns    y (batch, dim, L)
========== =============================================================

Computed in float32 (the library's kernels; a float64 model is cast at the
operator and back).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from .scan_layout import check_reverse

__all__ = ['EXPORT_SCAN_OPS', 'export_scan_op', 'exporting_kernel_op',
           'selective_scan_kernel', 'selective_scan_kernel_export']

#: the export modes of the scan: a standard-operator Loop (portable, the
#: default) or mmvim's kernel as a custom operator
EXPORT_SCAN_OPS = ('loop', 'mmvim')
_MODE = ['loop']


@contextlib.contextmanager
def export_scan_op(name: str) -> Iterator[None]:
    """Inside, scans traced for export become ``name``'s operator: 'loop'
    (standard ONNX) or 'mmvim' (``mmvim::selective_scan_kernel``)."""
    if name not in EXPORT_SCAN_OPS:
        raise ValueError(f'scan op {name!r}: use one of '
                         f'{", ".join(EXPORT_SCAN_OPS)}')
    previous, _MODE[0] = _MODE[0], name
    try:
        yield
    finally:
        _MODE[0] = previous


def exporting_kernel_op() -> bool:
    """Whether scans being exported now become mmvim's kernel operator
    (which runs reversed blocks itself, as the cpu backend does)."""
    return _MODE[0] == 'mmvim'


@torch.library.custom_op('mmvim::selective_scan_kernel', mutates_args=())
def selective_scan_kernel(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                          C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                          delta_bias: Optional[Tensor], softplus: bool,
                          reverse: List[int]) -> Tensor:
    """The operator (module docstring) in PyTorch: :func:`selective_scan`
    on the same inputs, B/C back in its (batch, G, N, L) layout."""
    from .selective_scan import selective_scan

    def contract(mat: Tensor) -> Tensor:
        return mat if mat.dim() == 2 else mat.transpose(-1, -2)

    flags = tuple(bool(r) for r in reverse) or None
    return selective_scan(u, delta, A, contract(B), contract(C), D, z,
                          delta_bias, softplus, reverse=flags)


@selective_scan_kernel.register_fake
def _(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
      D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
      softplus: bool, reverse: List[int]) -> Tensor:
    return u.new_empty(u.shape)


def _kernel_layout(mat: Tensor) -> Tensor:
    """B or C in a contract shape -> the operator's: constant (dim, N) as
    is, (batch, N, L) / (batch, G, N, L) -> (batch, G, L, N)."""
    if mat.dim() == 3:
        mat = mat.unsqueeze(1)
    return mat if mat.dim() == 2 else mat.transpose(-1, -2)


def selective_scan_kernel_export(u: Tensor, delta: Tensor, A: Tensor,
                                 B: Tensor, C: Tensor,
                                 D: Optional[Tensor] = None,
                                 z: Optional[Tensor] = None,
                                 delta_bias: Optional[Tensor] = None,
                                 delta_softplus: bool = False,
                                 reverse: Optional[Sequence[bool]] = None
                                 ) -> Tensor:
    """:func:`mmvim.ops.selective_scan` (same contract, already checked;
    no last state) as ``mmvim::selective_scan_kernel`` in float32."""
    flags = check_reverse(reverse, u.shape[1])
    dtype_in = u.dtype

    def f32(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.float()

    y = selective_scan_kernel(
        f32(u), f32(delta), f32(A), _kernel_layout(f32(B)),
        _kernel_layout(f32(C)), f32(D), f32(z), f32(delta_bias),
        bool(delta_softplus), [int(f) for f in flags or ()])
    return y.to(dtype_in)
