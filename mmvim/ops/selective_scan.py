"""Selective scan (the S6 recurrence of Mamba) behind one API, four backends.

For every batch ``b``, channel ``d`` and state ``n``::

    delta  = softplus(delta + delta_bias)           (each step optional)
    h[t]   = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * u[t] * B[t, n]
    y[t]   = sum_n C[t, n] * h[t]  (+ D[d] * u[t])  (* silu(z[t]))

``selective_scan`` has exactly the contract of mamba-ssm's ``selective_scan_fn``:

========  ==================================================================
u, delta  (batch, dim, L)
A         (dim, N), real
B, C      (dim, N) constant, (batch, N, L) input dependent, or
          (batch, G, N, L) grouped: channel ``d`` uses group ``d // (dim // G)``
D         (dim,) or None
z         (batch, dim, L) or None
returns   y (batch, dim, L) in ``u.dtype``; with ``return_last_state`` also
          h[L-1] (batch, dim, N) in float32
========  ==================================================================

Half precision as mamba-ssm's CUDA kernel (:mod:`mmvim.ops.precision`):
float16 / bfloat16 u, delta, z (and time-varying B/C) next to float32 A, D,
delta_bias (and constant B/C) are computed entirely in float32 (the step,
softplus, the state, the silu(z) gate, every gradient accumulation); only
the output is rounded to ``u.dtype``, and each gradient is returned in its
input's dtype. (mamba-ssm's Python ``selective_scan_ref`` differs in one
place: it evaluates ``silu(z)`` in z's 16-bit dtype.)

Backends (chosen per call by :func:`mmvim.ops.dispatch.resolve_backend`):

* ``cuda``: mamba-ssm's ``selective_scan_fn`` (imported lazily, once).
* ``triton``: mmvim's Triton kernels (:mod:`mmvim.ops.selective_scan_triton`),
  compiled at run time, for CUDA tensors when mamba-ssm is not installed.
* ``cpu``: mmvim's compiled C++ kernel (:mod:`mmvim.ops.selective_scan_cpu`,
  sources in ``mmvim/csrc``), for CPU tensors when it was built.
* ``torch``: :class:`_SelectiveScanTorch` below. The sequence is cut into
  chunks. Inside a chunk the recurrence runs in place, one fused
  ``addcmul_`` per time step over the whole (batch, dim, N) state, which
  keeps the arithmetic identical to the sequential definition (no division by
  cumulative decays, so no overflow for any ``delta * |A|``). Only the state
  at each chunk boundary is kept for backward; the backward pass recomputes a
  chunk's states from its boundary state and runs the reverse-time adjoint
  recurrence ``g[t] = C[t] dy[t] + exp(delta[t+1] A) g[t+1]`` the same way.
  Bias, softplus, the D skip and the silu(z) gate (and their gradients) are
  applied chunk by chunk inside the same loops, so no full-length
  intermediate is materialised and each pass works on cache-sized data.
  Memory is O(L * dim) for inputs/outputs plus O(chunk * dim * N) work space,
  so linear in L; time is linear in L.

While a model is traced for export (``torch.onnx.export``,
``torch.export``) no backend runs: the call becomes the graph operator of
:mod:`mmvim.ops.scan_export` (standard ONNX operators, docs/deploy.md).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.misc import is_exporting
from .dispatch import kernel, resolve_backend
from .precision import autocast_off, compute_dtype
from .scan_export import selective_scan_export
from .scan_layout import check_reverse, flip_bc, flip_blocks, regroup

__all__ = ['selective_scan', 'selective_scan_torch',
           'scan_reverses_in_kernel']

# Time steps per chunk of the torch backend: large enough that the per-chunk
# tensor ops amortise, small enough that a chunk's work space stays in cache.
DEFAULT_CHUNK = 128

ScanOutput = Union[Tensor, Tuple[Tensor, Tensor]]


# --------------------------------------------------------------------------
# input checks (shared by both backends: kernel shape errors are cryptic)
# --------------------------------------------------------------------------
def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Optional[Tensor], z: Optional[Tensor],
                  delta_bias: Optional[Tensor]) -> None:
    if u.dim() != 3:
        raise ValueError(f'selective_scan: u must be (batch, dim, L), got '
                         f'shape {tuple(u.shape)}')
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError('selective_scan: the sequence length (u.shape[2]) '
                         'must be at least 1')
    if delta.shape != u.shape:
        raise ValueError(f'selective_scan: delta shape {tuple(delta.shape)} '
                         f'must equal u shape {tuple(u.shape)}')
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'selective_scan: A must be (dim={dim}, N), got '
                         f'{tuple(A.shape)}')
    if A.is_complex():
        raise NotImplementedError(
            'selective_scan: complex A is not supported by mmvim (no vision '
            'backbone uses it); pass a real A.')
    dstate = A.shape[1]
    for name, mat in (('B', B), ('C', C)):
        ok = ((mat.dim() == 2 and tuple(mat.shape) == (dim, dstate))
              or (mat.dim() == 3 and tuple(mat.shape) == (batch, dstate,
                                                          length))
              or (mat.dim() == 4 and mat.shape[0] == batch
                  and mat.shape[2] == dstate and mat.shape[3] == length
                  and mat.shape[1] > 0 and dim % mat.shape[1] == 0))
        if not ok:
            raise ValueError(
                f'selective_scan: {name} has shape {tuple(mat.shape)}; '
                f'expected ({dim}, {dstate}), ({batch}, {dstate}, {length}) '
                f'or ({batch}, G, {dstate}, {length}) with G dividing '
                f'dim={dim}')
    if D is not None and tuple(D.shape) != (dim,):
        raise ValueError(f'selective_scan: D must be ({dim},), got '
                         f'{tuple(D.shape)}')
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise ValueError(f'selective_scan: delta_bias must be ({dim},), got '
                         f'{tuple(delta_bias.shape)}')
    if z is not None and z.shape != u.shape:
        raise ValueError(f'selective_scan: z shape {tuple(z.shape)} must '
                         f'equal u shape {tuple(u.shape)}')


# --------------------------------------------------------------------------
# torch backend
# --------------------------------------------------------------------------
# Internal layout: time first, channels split into groups,
#   state tensors (T, batch, G, H, N) with dim = G * H,
#   per-channel sequences (T, batch, G, H),
#   A (G, H, N), B/C either (G, H, N) constant or (L, batch, G', 1, N)
#   input dependent, G' in (1, G).
# Time-major makes each step's slice contiguous for the in-place recurrence.


def _to_internal(x: Tensor, groups: int) -> Tensor:
    """(batch, dim, L) -> (L, batch, G, H).

    A view when ``x`` is contiguous (so writing into it fills ``x``); any
    consumer of a non-contiguous input only reads, and may get a copy.
    Reading and writing through these strided views fuses the layout change
    into the per-chunk element-wise ops, which is cheaper than transposing
    whole tensors.
    """
    b, d, length = x.shape
    return x.permute(2, 0, 1).reshape(length, b, groups, d // groups)


def _new_with_internal_view(like: Tensor,
                            groups: int) -> Tuple[Tensor, Tensor]:
    """A new contiguous (batch, dim, L) tensor and its (L, b, G, H) view."""
    x = like.new_empty(like.shape)
    b, d, length = x.shape
    return x, x.permute(2, 0, 1).view(length, b, groups, d // groups)


def _bc_to_internal(mat: Tensor, groups: int) -> Tensor:
    """B or C in any contract shape -> broadcastable internal shape."""
    if mat.dim() == 2:  # (dim, N) -> (G, H, N)
        d, n = mat.shape
        return mat.reshape(groups, d // groups, n)
    if mat.dim() == 3:  # (batch, N, L) -> (L, batch, 1, 1, N)
        return mat.permute(2, 0, 1)[:, :, None, None, :].contiguous()
    # (batch, G', N, L) -> (L, batch, G', 1, N); here G' == groups
    return mat.permute(3, 0, 1, 2)[:, :, :, None, :].contiguous()


def _scan_chunk(a: Tensor, x: Tensor, h0: Optional[Tensor]) -> None:
    """In place: x[t] <- a[t] * x[t-1] + x[t] along dim 0 (x[-1] = h0)."""
    xs, decays = x.unbind(0), a.unbind(0)  # views, made once per chunk
    if h0 is not None:
        xs[0].addcmul_(decays[0], h0)
    for t in range(1, len(xs)):
        xs[t].addcmul_(decays[t], xs[t - 1])


def _reverse_scan_chunk(a_next: Tensor, g: Tensor) -> None:
    """In place: g[t] <- a_next[t] * g[t+1] + g[t], from the end backwards.

    ``a_next[t]`` is the decay of step t+1 (the caller already folded the
    carry from the following chunk into ``g[-1]``).
    """
    gs, decays = g.unbind(0), a_next.unbind(0)
    for t in range(len(gs) - 2, -1, -1):
        gs[t].addcmul_(decays[t], gs[t + 1])


class _Chunk:
    """One chunk's inputs in the internal layout, with the step sizes.

    ``raw`` is delta (+ bias) before softplus; ``dt`` the step size used by
    the recurrence. Built in the forward and rebuilt in the backward, so the
    full-length intermediates are never materialised.
    """

    def __init__(self, p: dict, s: int, e: int) -> None:
        self.s, self.e = s, e
        self.u = p['u'][s:e]
        raw = p['delta'][s:e]
        if p['delta_bias'] is not None:
            raw = raw + p['delta_bias']
        self.raw = raw
        self.dt = F.softplus(raw) if p['softplus'] else raw
        self.z = None if p['z'] is None else p['z'][s:e]
        self.B = _slice_t(p['B'], s, e)
        self.C = _slice_t(p['C'], s, e)

    def states(self, work: Tensor, A: Tensor,
               h0: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Decays a[t] and states h[t] of the chunk, given the state before.

        Both are written into ``work`` (2, chunk, batch, G, H, N), which is
        reused from chunk to chunk.
        """
        T = self.e - self.s
        dt = self.dt[..., None]
        a = torch.mul(dt, A, out=work[0, :T]).exp_()
        x = torch.mul(dt * self.u[..., None], self.B, out=work[1, :T])
        _scan_chunk(a, x, h0)
        return a, x


class _SelectiveScanTorch(torch.autograd.Function):
    """The whole op in one dtype: inputs in contract layout, output (b, d, L).

    ``A`` is (G, H, N), ``B``/``C`` in the internal shapes above, ``D`` and
    ``delta_bias`` (G, H) or None. ``u``, ``delta`` and ``z`` are turned
    time-major once; every element-wise step (bias, softplus, the D skip, the
    silu(z) gate) then runs chunk by chunk next to the recurrence, so each
    pass touches cache-sized data and no full-length intermediate is kept.
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                delta_bias: Optional[Tensor], softplus: bool, groups: int,
                chunk: int) -> Tuple[Tensor, Tensor]:
        p = dict(u=_to_internal(u, groups), delta=_to_internal(delta, groups),
                 z=None if z is None else _to_internal(z, groups), B=B, C=C,
                 delta_bias=delta_bias, softplus=softplus)
        batch, dim, length = u.shape
        chunk = min(chunk, length)
        work = u.new_empty((2, chunk, batch) + A.shape)
        out_bdl, out = _new_with_internal_view(u, groups)
        h = None
        boundaries = []  # state entering each chunk (None for the first)
        for s in range(0, length, chunk):
            c = _Chunk(p, s, min(s + chunk, length))
            boundaries.append(h)
            _, x = c.states(work, A, h)
            h = x[-1].clone()
            y = _contract_state(x, c.C)
            if D is not None:
                y.addcmul_(c.u, D)
            if z is not None:
                y.mul_(F.silu(c.z))
            out[c.s:c.e] = y
        ctx.set_materialize_grads(False)
        ctx.p = dict(softplus=softplus, groups=groups, chunk=chunk,
                     device=u.device.type,
                     boundaries=boundaries)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        return out_bdl, h

    @staticmethod
    def backward(ctx, dout: Optional[Tensor], dlast: Optional[Tensor]):
        with autocast_off(ctx.p['device']):
            return _SelectiveScanTorch._backward(ctx, dout, dlast)

    @staticmethod
    def _backward(ctx, dout: Optional[Tensor], dlast: Optional[Tensor]):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        chunk, groups = ctx.p['chunk'], ctx.p['groups']
        p = dict(ctx.p, u=_to_internal(u, groups),
                 delta=_to_internal(delta, groups),
                 z=None if z is None else _to_internal(z, groups), B=B, C=C,
                 delta_bias=delta_bias)
        batch, dim, length = u.shape
        work = u.new_empty((4, chunk, batch) + A.shape)
        dout = None if dout is None else _to_internal(dout, groups)
        # gradients in the contract layout, filled chunk by chunk through
        # their time-major views
        du_bdl, du = _new_with_internal_view(u, groups)
        ddelta_bdl, ddelta = _new_with_internal_view(u, groups)
        dz_bdl, dz = (None, None) if z is None else _new_with_internal_view(
            u, groups)
        dA = torch.zeros_like(A)
        dB = torch.zeros_like(B) if B.dim() == 3 else torch.empty_like(B)
        dC = torch.zeros_like(C) if C.dim() == 3 else torch.empty_like(C)
        dD = None if D is None else torch.zeros_like(D)
        dbias = None if delta_bias is None else torch.zeros_like(delta_bias)
        # carry = dL/dh at the last step of the chunk coming from later steps
        carry = dlast
        starts = list(range(0, length, chunk))
        for i in reversed(range(len(starts))):
            s = starts[i]
            c = _Chunk(p, s, min(s + chunk, length))
            e, T, h0 = c.e, c.e - s, p['boundaries'][i]
            a, x = c.states(work, A, h0)
            # output gate and skip: out = (C.h + D u) * silu(z)
            dy = torch.zeros_like(c.u) if dout is None else dout[s:e].clone()
            if z is not None:
                y = _contract_state(x, c.C)
                if D is not None:
                    y.addcmul_(c.u, D)
                sig = torch.sigmoid(c.z)
                # d silu(z)/dz = sig * (1 + z * (1 - sig))
                dsilu = (1 - sig).mul_(c.z).add_(1).mul_(sig)
                torch.mul(dy * y, dsilu, out=dz[s:e])
                dy.mul_(sig.mul_(c.z))
            if D is not None:
                dD.add_((dy * c.u).sum((0, 1)))
            # adjoint recurrence g[t] = C[t] dy[t] + a[t+1] g[t+1]
            g = torch.mul(dy[..., None], c.C, out=work[2, :T])
            if carry is not None:
                g[-1].add_(carry)
            _reverse_scan_chunk(a[1:], g)
            carry = a[0] * g[0]
            # dL/d(delta*A)[t] = g[t] * a[t] * h[t-1]
            gda = torch.mul(g, a, out=work[3, :T])
            gda[1:].mul_(x[:-1])
            if h0 is None:
                gda[0].zero_()
            else:
                gda[0].mul_(h0)
            # d/d(delta)[t] = sum_n gda * A; dA = sum_{t,b} gda * delta
            # (the decays in work[0] are no longer needed: reuse the slot)
            ddt = torch.mul(gda, A, out=work[0, :T]).sum(-1)
            dA.add_(gda.mul_(c.dt[..., None]).sum((0, 1)))
            # x[t] = a[t] x[t-1] + dt u B: dL/d(dt u)[t] = sum_n g B
            gb = _contract_state(g, c.B)
            ddt.addcmul_(gb, c.u)
            dut = gb.mul_(c.dt)
            if D is not None:
                dut.addcmul_(dy, D)
            du[s:e] = dut
            if p['softplus']:
                # softplus' = sigmoid, and 1 above the threshold (20)
                ddt.mul_(torch.where(c.raw > 20, 1.0, torch.sigmoid(c.raw)))
            if dbias is not None:
                dbias.add_(ddt.sum((0, 1)))
            ddelta[s:e] = ddt
            _accumulate(dB, g, c.dt * c.u, c.B, s, e)
            _accumulate(dC, x, dy, c.C, s, e)
        return (du_bdl, ddelta_bdl, dA, dB, dC, dD, dz_bdl, dbias, None, None,
                None)


def _slice_t(mat: Tensor, s: int, e: int) -> Tensor:
    """Time slice of an internal B/C (constant ones have no time axis)."""
    return mat if mat.dim() == 3 else mat[s:e]


def _contract_state(x: Tensor, mat: Tensor) -> Tensor:
    """sum_n x[t, b, g, h, n] * mat[..., n] -> (T, b, G, H).

    Written as batched matrix products over contiguous views (einsum would
    copy the (T, b, G, H, N) state to permute it).
    """
    t, b, g, h, n = x.shape
    if mat.dim() == 3:  # constant (G, H, N)
        return (x * mat).sum(-1)
    if mat.shape[2] == 1:  # (T, b, 1, 1, N)
        out = torch.matmul(x.reshape(t * b, g * h, n),
                           mat.reshape(t * b, n, 1))
    else:  # (T, b, G, 1, N)
        out = torch.matmul(x.reshape(t * b * g, h, n),
                           mat.reshape(t * b * g, n, 1))
    return out.view(t, b, g, h)


def _accumulate(grad: Tensor, x: Tensor, w: Tensor, like: Tensor, s: int,
                e: int) -> None:
    """grad (shaped like ``like``) gets sum over sharing channels of x * w.

    ``x`` is (T, b, G, H, N), contiguous; ``w`` (T, b, G, H) is made
    contiguous (a no-op for most callers): with batch 1 a time-strided ``w``
    (e.g. ``dy`` from a contiguous (b, d, L) gradient) reshapes to a strided
    (T, 1, G*H) view, on which CPU batched matmul runs ~300x slower.
    """
    t, b, g, h, n = x.shape
    w = w.contiguous()
    if like.dim() == 3:  # constant: sum over time and batch
        grad.add_((x * w[..., None]).sum((0, 1)))
    elif like.shape[2] == 1:  # one B/C for all channels
        grad[s:e, :, 0, 0] = torch.matmul(
            w.reshape(t * b, 1, g * h),
            x.reshape(t * b, g * h, n)).view(t, b, n)
    else:  # grouped: one B/C per group
        grad[s:e, :, :, 0] = torch.matmul(
            w.reshape(t * b * g, 1, h),
            x.reshape(t * b * g, h, n)).view(t, b, g, n)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                         C: Tensor, D: Optional[Tensor] = None,
                         z: Optional[Tensor] = None,
                         delta_bias: Optional[Tensor] = None,
                         delta_softplus: bool = False,
                         return_last_state: bool = False,
                         chunk: int = DEFAULT_CHUNK) -> ScanOutput:
    """Pure-PyTorch selective scan; same contract as :func:`selective_scan`."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    # float32 state for float32/16-bit inputs (as the kernel); float64 stays
    # float64 so the backward can be gradchecked.
    cdt = compute_dtype(dtype_in)
    groups = B.shape[1] if B.dim() == 4 else 1
    if C.dim() == 4 and C.shape[1] != groups:
        # B and C grouped differently: expand both to per-channel groups is
        # wasteful; use the finer grouping for both.
        groups = math.lcm(groups, C.shape[1])
    dim = u.shape[1]
    Bi = _bc_to_internal(regroup(B.to(cdt), groups), groups)
    Ci = _bc_to_internal(regroup(C.to(cdt), groups), groups)

    def per_group(v: Optional[Tensor]) -> Optional[Tensor]:
        return None if v is None else v.to(cdt).reshape(groups, -1)

    with autocast_off(u.device.type):
        out, last = _SelectiveScanTorch.apply(
            u.to(cdt), delta.to(cdt),
            A.to(cdt).reshape(groups, -1, A.shape[1]), Bi, Ci, per_group(D),
            None if z is None else z.to(cdt), per_group(delta_bias),
            delta_softplus, groups, chunk)
    out = out.to(dtype_in)
    if return_last_state:
        return out, last.reshape(u.shape[0], dim, A.shape[1])
    return out


# --------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False,
                   return_last_state: bool = False,
                   reverse: Optional[Sequence[bool]] = None) -> ScanOutput:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` contract.

    Runs mamba-ssm's CUDA kernel (else mmvim's Triton kernel) for CUDA
    tensors and mmvim's C++ kernel for CPU tensors when they are
    importable, and the pure-PyTorch backend otherwise (see the module
    docstring and ``MMVIM_SCAN_BACKEND``). Shapes
    are given in the module docstring.

    ``reverse`` (an mmvim extension, default None): R flags, R dividing dim;
    the channels of block r (``d // (dim // R) == r``) run backwards in time
    when ``reverse[r]`` is set, i.e. their output is
    ``flip(S6(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z)))`` along
    L, with all inputs and the output in the natural order (their
    ``last_state`` is the state after step 0). The ``cpu`` and ``triton``
    kernels read the time axis of those blocks from the end, which saves
    the flips that bidirectional mixers (Vim, VMamba's reversed routes)
    would otherwise copy; the other backends do exactly those flips.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    # --- graph export (torch.onnx / torch.export): standard ops only, see
    # mmvim/ops/scan_export.py; the backends below are never traced
    if is_exporting():
        return selective_scan_export(u, delta, A, B, C, D, z, delta_bias,
                                     delta_softplus, return_last_state,
                                     reverse)
    # ---
    reverse = check_reverse(reverse, u.shape[1])
    backend = resolve_backend('selective_scan', u)
    if backend in _REVERSE_IN_KERNEL:
        fn = kernel('selective_scan', backend).load()
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                  return_last_state, reverse=reverse)
    if reverse is not None:
        u, delta, z = (flip_blocks(t, reverse) for t in (u, delta, z))
        B, C = flip_bc(B, reverse), flip_bc(C, reverse)
        if backend == 'cuda' and (B.dim() == 2) != (C.dim() == 2):
            raise NotImplementedError(
                'selective_scan: reverse on the cuda backend needs B and C '
                'both constant or both time-varying (mamba-ssm\'s kernel '
                'takes grouped B/C only then, and a time-varying B/C shared '
                'by forward and reversed channels must be split into '
                'groups)')
    if backend != 'torch':
        fn = kernel('selective_scan', backend).load()
        res = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                 return_last_state)
    else:
        res = selective_scan_torch(u, delta, A, B, C, D, z, delta_bias,
                                   delta_softplus, return_last_state)
    if reverse is None:
        return res
    if return_last_state:
        return flip_blocks(res[0], reverse), res[1]
    return flip_blocks(res, reverse)


def scan_reverses_in_kernel(x: Tensor) -> bool:
    """Whether :func:`selective_scan` on tensors like ``x`` runs its
    ``reverse`` blocks in the kernel (the ``cpu`` backend) rather than by
    flipping them, so that a caller saves copies by keeping a backward
    branch in the natural time order. Either way the results agree. While
    a graph is exported it is the export scan that decides: the
    standard-operator Loop flips, mmvim's kernel exported as a custom
    operator (``--scan-op mmvim``) does not."""
    if is_exporting():
        from .scan_export_kernel import exporting_kernel_op
        return exporting_kernel_op()
    return resolve_backend('selective_scan', x) in _REVERSE_IN_KERNEL


# the backends whose kernels read reversed blocks backwards themselves
_REVERSE_IN_KERNEL = ('cpu', 'triton')

