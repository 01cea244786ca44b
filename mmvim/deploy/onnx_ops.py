"""The ONNX translations mmvim adds to torch's exporter.

* ``mmvim::ssm_scan``, the selective scan (:mod:`mmvim.deploy.onnx_scan`);
* ``mmvim::batched_nms`` and ``mmvim::multilevel_roi_align``, a detector's
  NMS and RoI pooling (:mod:`mmvim.deploy.onnx_det_ops`);
* ``mmvim::selective_scan_kernel``, the scan of ``--scan-op mmvim``, as
  mmvim's custom operator (:mod:`mmvim.deploy.ort_ops`);
* ``aten._adaptive_avg_pool2d`` (UperNet's pyramid pooling): torch
  decomposes it into gathers whose indices are wrong once the input size
  is dynamic (onnxruntime stops with "GatherND: invalid index" at any other
  size than the traced one). Here it is two matrix products with pooling
  matrices built in the graph from the input size, valid for every size:
  ``y = P_h @ x @ P_w^T`` with ``P[i, j] = 1 / (end_i - start_i)`` for
  ``start_i <= j < end_i``, ``start_i = floor(i * n / o)``, ``end_i =
  ceil((i + 1) * n / o)`` (PyTorch's windows);
* ``aten.einsum``: an equation that is a (broadcast) matrix product as
  written, such as SS2D's ``'bkdl,kcd->bkcl'`` or Vim's fused
  ``'bgdl,ged->bgel'``, becomes ``MatMul`` (onnxruntime's ``Einsum`` runs
  these 5-7x slower); any other equation stays ``Einsum``.
"""
from __future__ import annotations

from .onnx_scan import _Nodes, ssm_scan_onnx

__all__ = ['adaptive_avg_pool2d_onnx', 'einsum_onnx', 'matmul_order',
           'translation_table']


def _pool_matrix(g: _Nodes, x, axis: int, out: int, dtype):
    """(out, n) averaging matrix for axis ``axis`` of ``x`` (n = its size,
    dynamic)."""
    n = g('Squeeze', g.shape(x, axis, axis + 1))  # scalar int64
    i = g('Unsqueeze', g('Range', g.const(0), g.const(out), g.const(1)),
          g.const([1]))  # (out, 1)
    j = g('Unsqueeze', g('Range', g.const(0), n, g.const(1)),
          g.const([0]))  # (1, n)
    start = g('Div', g('Mul', i, n), g.const(out))
    end = g('Div', g('Add', g('Mul', g('Add', i, g.const(1)), n),
                     g.const(out - 1)), g.const(out))
    inside = g('And', g('GreaterOrEqual', j, start), g('Less', j, end))
    count = g('Cast', g('Sub', end, start), to=dtype)
    return g('Div', g('Cast', inside, to=dtype), count)


def adaptive_avg_pool2d_onnx(self, output_size):
    """``aten._adaptive_avg_pool2d(self (N, C, H, W), [oh, ow])`` as two
    MatMuls (module docstring)."""
    import onnx_ir as ir
    import onnxscript
    tracer = onnxscript.evaluator.default()
    g = _Nodes(tracer.opset.version)
    oh, ow = (int(s) for s in output_size)
    dtype = int(self.dtype or ir.DataType.FLOAT)
    rows = _pool_matrix(g, self, 2, oh, dtype)  # (oh, H)
    cols = _pool_matrix(g, self, 3, ow, dtype)  # (ow, W)
    y = g('MatMul', rows, self)  # (N, C, oh, W)
    y = g('MatMul', y, g('Transpose', cols, perm=[1, 0]))  # (N, C, oh, ow)
    tracer.nodes.extend(g.nodes)
    return y


def matmul_order(equation: str):
    """(i, j) such that ``einsum(equation, x0, x1) == x_i @ x_j`` with
    torch/ONNX matmul broadcasting and no transposes, or None."""
    if '...' in equation or '->' not in equation:
        return None
    lhs, out = equation.replace(' ', '').split('->')
    ops = lhs.split(',')
    if len(ops) != 2 or any(len(set(o)) != len(o) for o in ops + [out]):
        return None
    for i, j in ((0, 1), (1, 0)):
        p, q = ops[i], ops[j]
        if min(len(p), len(q), len(out)) < 2:
            continue
        m, k, k2, n = p[-2], p[-1], q[-2], q[-1]
        batch = out[:-2]
        if k != k2 or k in out or out[-2:] != m + n or m in q or n in p:
            continue
        if any(len(b) and batch[len(batch) - len(b):] != b
               for b in (p[:-2], q[:-2])):
            continue
        if set(p + q) - set(out) == {k}:
            return i, j
    return None


def einsum_onnx(equation: str, tensors, path=None):
    """``aten.einsum``: ``MatMul`` where the equation is one (see
    :func:`matmul_order`), else ONNX ``Einsum``."""
    import onnxscript
    tracer = onnxscript.evaluator.default()
    g = _Nodes(tracer.opset.version)
    order = matmul_order(equation) if len(tensors) == 2 else None
    if order is None:
        y = g('Einsum', *tensors, equation=equation)
    else:
        y = g('MatMul', tensors[order[0]], tensors[order[1]])
    tracer.nodes.extend(g.nodes)
    return y


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``."""
    import torch

    import mmvim.ops.scan_export  # noqa: F401  (registers the operators)
    import mmvim.ops.scan_export_kernel  # noqa: F401

    from . import det_ops  # noqa: F401  (the detection operators)
    from .onnx_det_ops import batched_nms_onnx, multilevel_roi_align_onnx
    from .ort_ops import selective_scan_kernel_onnx
    return {
        torch.ops.mmvim.batched_nms.default: batched_nms_onnx,
        torch.ops.mmvim.multilevel_roi_align.default:
        multilevel_roi_align_onnx,
        torch.ops.mmvim.ssm_scan.default: ssm_scan_onnx,
        torch.ops.mmvim.selective_scan_kernel.default:
        selective_scan_kernel_onnx,
        torch.ops.aten._adaptive_avg_pool2d.default:
        adaptive_avg_pool2d_onnx,
        torch.ops.aten.einsum.default: einsum_onnx,
    }

