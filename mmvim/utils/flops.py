"""FLOPs of mmvim models with mmengine's (fvcore's) jit-trace analyser.

The analyser counts one multiply-add as one FLOP for linear/conv/einsum/
matmul and norms as fvcore does. It cannot trace the selective scan (Python
loops, or the CUDA kernel), so while counting, the scan is replaced by an
opaque stand-in op that :func:`selective_scan_flops` counts the way
mamba-ssm's authors and the official VMamba analysis do
(https://github.com/state-spaces/mamba/issues/110)::

    9 * B * L * D * N  (+ B * D * L with the D skip, + B * D * L with z)

where D is the number of scanned channels (all routes / directions).

``F.scaled_dot_product_attention`` (MambaVision's attention) is one
``aten::scaled_dot_product_attention`` node that the analyser does not know
(it would count 0); :func:`sdpa_flop_jit` counts its two products the way
fvcore counts an explicit ``q @ k^T`` and ``attn @ v``::

    B * heads * Lq * S * (E + Ev)

(E: query/key head dim, Ev: value head dim, S: key length); the softmax,
scale and mask are element-wise and not counted, as for the explicit form.
A convolution with a string padding (``aten::_convolution_mode``) is
counted as any other convolution.
"""
from __future__ import annotations

import importlib
from typing import Any, List, Tuple, Union

import torch
from torch import Tensor

SCAN_OP = 'prim::PythonOp.SelectiveScanFlops'
SDPA_OP = 'aten::scaled_dot_product_attention'
# F.conv1d/2d with a string padding ('same', 'valid'; MambaVision's mixer)
CONV_MODE_OP = 'aten::_convolution_mode'


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


def sdpa_flops(query: List[int], key: List[int], value: List[int]) -> int:
    """FLOPs of ``scaled_dot_product_attention`` for these shapes
    (..., Lq, E), (..., S, E), (..., S, Ev): ``q @ k^T`` plus ``attn @ v``."""
    batch = 1
    for size in query[:-2]:
        batch *= size
    length, dim = query[-2:]
    return batch * length * key[-2] * (dim + value[-1])


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """jit handle for ``aten::scaled_dot_product_attention``."""
    return sdpa_flops(*(_shape(value) for value in inputs[:3]))


def conv_mode_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """jit handle for ``aten::_convolution_mode`` (a convolution with a
    string padding), counted as mmengine counts ``aten::_convolution``:
    output elements x (input channels / groups) x kernel size."""
    flops = 1
    for size in _shape(outputs[0]) + _shape(inputs[1])[1:]:
        flops *= size
    return flops


def analyse_flops(model: torch.nn.Module,
                  inputs: Union[Tensor, Tuple[Tensor, ...]]) -> dict:
    """Counts ``model(*inputs)``: a dict with ``total``, ``by_operator``
    (FLOPs per op kind), ``by_module`` (FLOPs per module name, each module
    including its submodules) and ``unsupported`` (ops met and not counted,
    with how often)."""
    from unittest import mock

    from mmengine.analysis import FlopAnalyzer

    # (the package attribute of that name is the function, not the module)
    scan_module = importlib.import_module('mmvim.ops.selective_scan')
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(SCAN_OP, _scan_handle)
    analyzer.set_op_handle(SDPA_OP, sdpa_flop_jit)
    analyzer.set_op_handle(CONV_MODE_OP, conv_mode_flop_jit)
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
    return dict(total=total, by_operator=dict(analyzer.by_operator()),
                by_module=dict(analyzer.by_module()),
                unsupported=dict(analyzer.unsupported_ops()))


def count_flops(model: torch.nn.Module,
                inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[int, dict]:
    """Total FLOPs of ``model(*inputs)`` and the count per operator."""
    result = analyse_flops(model, inputs)
    return result['total'], result['by_operator']
