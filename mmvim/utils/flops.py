"""FLOPs of mmvim models with mmengine's (fvcore's) jit-trace analyser.

The analyser counts one multiply-add as one FLOP for linear/conv/einsum/
matmul and norms as fvcore does. It cannot trace the selective scan (Python
loops, or the CUDA kernel), so while counting, the scan is replaced by an
opaque stand-in op that :func:`selective_scan_flops` counts the way
mamba-ssm's authors and the official VMamba analysis do
(https://github.com/state-spaces/mamba/issues/110)::

    9 * B * L * D * N  (+ B * D * L with the D skip, + B * D * L with z)

where D is the number of scanned channels (all routes / directions).
"""
from __future__ import annotations

import importlib
from typing import Any, List, Tuple, Union

import torch
from torch import Tensor

SCAN_OP = 'prim::PythonOp.SelectiveScanFlops'


class SelectiveScanFlops(torch.autograd.Function):
    """Stand-in for the selective scan while tracing for FLOPs: one opaque
    op with the contract's tensors (absent D / z as empty tensors) whose
    output has the right shape. The real scan's Python loops and optional
    arguments do not trace."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z):  # noqa: N803
        return torch.zeros_like(u)


def _traceable_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                    delta_softplus=False, return_last_state=False,
                    **kwargs):
    empty = u.new_empty(0)
    out = SelectiveScanFlops.apply(u, delta, A, B, C,
                                   empty if D is None else D,
                                   empty if z is None else z)
    if return_last_state:
        return out, u.new_zeros(u.shape[0], u.shape[1], A.shape[-1])
    return out


def selective_scan_flops(batch: int, length: int, dim: int, dstate: int,
                         with_d: bool = True, with_z: bool = False) -> int:
    """FLOPs of one selective scan (see the module docstring)."""
    flops = 9 * batch * length * dim * dstate
    if with_d:
        flops += batch * dim * length
    if with_z:
        flops += batch * dim * length
    return flops


def _shape(value: Any) -> List[int]:
    return list(value.type().sizes())


def _scan_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """jit handle for :class:`SelectiveScanFlops` (u, delta, A, B, C, D, z)."""
    batch, dim, length = _shape(inputs[0])
    dstate = _shape(inputs[2])[-1]
    return selective_scan_flops(batch, length, dim, dstate,
                                _shape(inputs[5]) != [0],
                                _shape(inputs[6]) != [0])


def count_flops(model: torch.nn.Module,
                inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[int, dict]:
    """Total FLOPs of ``model(*inputs)`` and the count per operator."""
    from unittest import mock

    from mmengine.analysis import FlopAnalyzer

    # (the package attribute of that name is the function, not the module)
    scan_module = importlib.import_module('mmvim.ops.selective_scan')
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(SCAN_OP, _scan_handle)
    # element-wise ops the official analysis also leaves out
    for name in ('aten::silu', 'aten::neg', 'aten::exp', 'aten::flip'):
        analyzer.set_op_handle(name, None)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    # every backend's entry point goes through this module's globals
    with mock.patch.object(scan_module, 'selective_scan_torch',
                           _traceable_scan), \
            mock.patch.object(scan_module, 'resolve_backend',
                              lambda *a, **k: 'torch'):
        total = analyzer.total()
    return total, dict(analyzer.by_operator())
