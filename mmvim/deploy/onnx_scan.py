"""``mmvim::ssm_scan`` (:mod:`mmvim.ops.scan_export`) in standard ONNX
operators.

For inputs ``u``, ``delta``, ``z`` (b, D, L), ``A`` (D, N), ``B``, ``C``
(b, G, N, L), ``D``, ``delta_bias`` (D,) and ``chunk`` T, the graph is::

    u, delta, z, B, C -> time-major (L, b, ...), zero steps appended up to
    n * T steps (n computed in the graph from L, which may be dynamic)
    h = zeros(1, b, G, N, H)
    Loop c = 0 .. n-1, carrying h:
        chunk c (T steps): dt = softplus(delta + bias), a = exp(dt A),
        x = dt u B                                  (T, b, G, N, H)
        h = a[t] h + x[t] for t = 0 .. T-1, keeping every state
        y = (C . states + D u) * silu(z)            -> scan output (T, b, D)
    y: (n, T, b, D) -> (n T, b, D)[:L] -> (b, D, L)

Channels are innermost in every chunk tensor (the state is (.., G, N, H)),
so the broadcasts run over contiguous rows. Only standard operators appear
(Loop, Slice, Transpose, Reshape, Exp, Log, Mul, Add, Split, Concat,
MatMul, ...), no custom domain: onnxruntime, or any runtime with ``Loop``,
runs it. The graph is the same for every L.
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Union

import numpy as np
import onnx_ir as ir

__all__ = ['build_ssm_scan', 'ssm_scan_onnx', 'exporter_tracer']

_BODIES = itertools.count()  # unique names for the Loop bodies
_NP = {ir.DataType.FLOAT: np.float32, ir.DataType.DOUBLE: np.float64}


class _Nodes:
    """Collects ONNX nodes: ``g('Mul', a, b)`` appends one and returns its
    output (a list of outputs for ``_n > 1``). With a ``prefix`` the
    outputs are named (the exporter names only its own graph's values)."""

    def __init__(self, opset: int, prefix: Optional[str] = None) -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: List[ir.Node] = []

    def __call__(self, op_type: str, *inputs: Optional[ir.Value],
                 _n: int = 1, **attrs) -> Union[ir.Value, Sequence[ir.Value]]:
        node = ir.Node('', op_type, inputs=list(inputs),
                       attributes=ir.convenience.convert_attributes(attrs),
                       num_outputs=_n, version=self.opset)
        if self.prefix is not None:
            for i, out in enumerate(node.outputs):
                out.name = f'{self.prefix}_{len(self.nodes)}_{i}'
        self.nodes.append(node)
        return node.outputs[0] if _n == 1 else list(node.outputs)

    def const(self, value, dtype=np.int64) -> ir.Value:
        return self('Constant', value=ir.tensor(np.asarray(value,
                                                           dtype=dtype)))

    def shape(self, v: ir.Value, start: int, end: Optional[int] = None
              ) -> ir.Value:
        return self('Shape', v, start=start, end=end)


def _softplus(g: _Nodes, x: ir.Value, one: ir.Value) -> ir.Value:
    """``relu(x) + log1p(exp(-abs(x)))``, log1p(e) = log(u) + (e - (u - 1)) / u
    (as :func:`mmvim.ops.scan_export.softplus_export`)."""
    e = g('Exp', g('Neg', g('Abs', x)))
    u = g('Add', e, one)
    log1p = g('Add', g('Log', u), g('Div', g('Sub', e, g('Sub', u, one)), u))
    return g('Add', g('Relu', x), log1p)


def _static(name: str, value) -> int:
    if not isinstance(value, int):
        raise ValueError(f'ssm_scan: the {name} must be static for ONNX '
                         'export (only batch and length may be dynamic)')
    return value


def build_ssm_scan(g: _Nodes, u: ir.Value, delta: ir.Value, A: ir.Value,
                   B: ir.Value, C: ir.Value, D: Optional[ir.Value] = None,
                   z: Optional[ir.Value] = None,
                   bias: Optional[ir.Value] = None, softplus: bool = False,
                   chunk: int = 32,
                   dtype: ir.DataType = ir.DataType.FLOAT) -> ir.Value:
    """Append the scan's nodes to ``g``; returns y (b, D, L). Inputs as in
    the module docstring (D, z, bias may be None)."""
    if chunk < 1:
        raise ValueError(f'ssm_scan: chunk must be >= 1, got {chunk}')
    dim = _static('dim', u.shape[1])
    G = _static('number of B/C groups', B.shape[1])
    N = _static('d_state', A.shape[1])
    H, T = dim // G, chunk
    zeros = ir.tensor(np.zeros(1, _NP[dtype]))
    length = g.shape(u, 2, 3)
    step = g.const([T])
    n_chunks = g('Div', g('Add', length, g.const([T - 1])), step)
    pad = g('Sub', g('Mul', n_chunks, step), length)

    def time_major(v):  # (b, X.., L) -> (n, T, b, X..), zero steps appended
        if v is None:
            return None
        rank = len(v.shape)
        v = g('Transpose', v, perm=[rank - 1] + list(range(rank - 1)))
        # Concat: onnxruntime's Pad is slower
        tail = g('ConstantOfShape', g('Concat', pad, g.shape(v, 1), axis=0),
                 value=zeros)
        return g('Reshape', g('Concat', v, tail, axis=0), g('Concat', g.const(
            [-1, T]), g.shape(v, 1), axis=0))

    u_, delta_, z_, B_, C_ = (time_major(v) for v in (u, delta, z, B, C))
    A_ = g('Transpose', g('Reshape', A, g.const([G, H, N])),
           perm=[0, 2, 1])  # (G, N, H)
    D_ = None if D is None else g('Reshape', D, g.const([G, H]))
    bias_ = None if bias is None else g('Reshape', bias, g.const([G, H]))
    one = g.const(1, _NP[dtype])
    h0 = g('ConstantOfShape', g('Concat', g.const([1]), g.shape(u, 0, 1),
                                g.const([G, N, H]), axis=0), value=zeros)

    # the Loop body: (chunk index, condition, state) -> (condition, state, y)
    prefix = f'ssm_scan{next(_BODIES)}'
    b = _Nodes(g.opset, prefix)
    it = ir.Value(name=f'{prefix}_iter', shape=ir.Shape([]),
                  type=ir.TensorType(ir.DataType.INT64))
    cond = ir.Value(name=f'{prefix}_cond', shape=ir.Shape([]),
                    type=ir.TensorType(ir.DataType.BOOL))
    h = h_in = ir.Value(name=f'{prefix}_state', type=ir.TensorType(dtype))

    def chunk_of(v, inner):  # (T, b, G, inner)
        return b('Reshape', b('Gather', v, it, axis=0),
                 b.const([T, -1, G, inner]))

    uc, dt = chunk_of(u_, H), chunk_of(delta_, H)
    if bias_ is not None:
        dt = b('Add', dt, bias_)
    if softplus:
        dt = _softplus(b, dt, one)
    a = b('Exp', b('Mul', b('Unsqueeze', dt, b.const([3])), A_))
    x = b('Mul', b('Unsqueeze', b('Mul', dt, uc), b.const([3])),
          b('Unsqueeze', chunk_of(B_, N), b.const([-1])))  # (T, b, G, N, H)
    a_t = b('Split', a, axis=0, num_outputs=T, _n=T)
    x_t = b('Split', x, axis=0, num_outputs=T, _n=T)
    states = []
    for t in range(T):  # (1, b, G, N, H) each
        h = b('Add', b('Mul', a_t[t], h), x_t[t])
        states.append(h)
    states = b('Concat', *states, axis=0)
    Cc = chunk_of(C_, N)
    if N == 1:  # C . h without a reduction
        y = b('Mul', b('Unsqueeze', Cc, b.const([-1])), states)
    else:
        y = b('MatMul', b('Unsqueeze', Cc, b.const([3])), states)
    y = b('Squeeze', y, b.const([3]))  # (T, b, G, H)
    if D_ is not None:
        y = b('Add', y, b('Mul', uc, D_))
    if z_ is not None:
        zc = chunk_of(z_, H)
        y = b('Mul', y, b('Mul', zc, b('Sigmoid', zc)))
    y = b('Reshape', y, b.const([T, -1, dim]))
    body = ir.Graph([it, cond, h_in], [b('Identity', cond), h, y],
                    nodes=b.nodes, name=prefix)
    _, ys = g('Loop', g('Squeeze', n_chunks), None, h0, body=body, _n=2)
    y = g('Reshape', ys, g('Concat', g.const([-1]), g.shape(ys, 2), axis=0))
    y = g('Slice', y, g.const([0]), length, g.const([0]))  # (L, b, D)
    return g('Transpose', y, perm=[1, 2, 0])


def exporter_tracer(what: str):
    """The ONNX exporter's tracer that a translation appends its nodes to
    (``tracer.nodes``, ``tracer.opset``); RuntimeError naming ``what`` if
    this exporter records nodes otherwise."""
    import onnxscript
    tracer = onnxscript.evaluator.default()
    if not isinstance(getattr(tracer, 'nodes', None), list):
        raise RuntimeError(
            f'{what}: this ONNX exporter does not record nodes the way '
            'torch 2.6-2.13 does; export with the pinned torch '
            '(pip install -e .[deploy]).')
    return tracer


def ssm_scan_onnx(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                  softplus: bool = False, chunk: int = 32):
    """The translation of ``mmvim::ssm_scan`` for ``torch.onnx.export(...,
    custom_translation_table=...)``: records :func:`build_ssm_scan`'s
    nodes into the exporter's graph."""
    tracer = exporter_tracer('mmvim::ssm_scan')
    g = _Nodes(tracer.opset.version)
    y = build_ssm_scan(g, u, delta, A, B, C, D, z, delta_bias, softplus,
                       chunk, dtype=u.dtype or ir.DataType.FLOAT)
    tracer.nodes.extend(g.nodes)
    return y
