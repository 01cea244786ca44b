"""Test-only machinery for the contract test of mmvim's glue to the CUDA
kernels (tests/test_cuda_glue_contract.py), on CPU.

mamba-ssm's ``selective_scan_fn`` and causal-conv1d's ``causal_conv1d_fn``
are Python code (autograd Functions, layout fix-ups, a torch custom op)
around two compiled modules, ``selective_scan_cuda`` and
``causal_conv1d_cuda``. Here:

* :func:`kernel_sources` fetches the two packages' sdists (pinned versions
  and hashes, :mod:`mmvim.utils.kernel_sdists`) with pip into a cache
  directory and unpacks their Python and C++ sources. Nothing is installed:
  the sources are never on ``sys.path``.
* :func:`load_interfaces` imports the REAL interface modules from those
  sources under the test only, with stand-ins for what needs a GPU (the two
  compiled modules, and mamba-ssm's Triton layer norm, which
  ``selective_scan_interface`` imports but our calls never use), and then
  takes every ``mamba_ssm*`` / ``causal_conv1d*`` entry out of
  ``sys.modules`` again, so the rest of the process never sees them.
* :class:`SelectiveScanCuda` / :class:`CausalConv1dCuda` replace the compiled
  modules. They (a) enforce the argument checks of the C++ entry points
  (``csrc/selective_scan/selective_scan.cpp`` of mamba-ssm 2.3.2.post1,
  ``csrc/causal_conv1d.cpp`` of causal-conv1d 1.7.0: every TORCH_CHECK on
  dtypes, shapes, strides, plus the few requirements the kernels rely on
  without checking, which would give wrong results or a misaligned-address
  fault: channels divisible by the number of B/C groups, 16-byte aligned
  rows where the kernels use vector loads) and (b) compute with mmvim's
  torch backend, returning what the C++ returns (same list layout, dtypes
  and memory layouts: ``out`` like ``delta``, the fp32 chunk states ``x``
  the wrapper slices ``last_state`` from and saves for backward, fp32
  ``dweight``/``dbias``, ...). "On the GPU" means "on u's device" here.
* :func:`cuda_autocast` applies the casting policy of
  ``torch.autocast('cuda', dtype)`` to CPU tensors (see its docstring).
"""
from __future__ import annotations

import contextlib
import importlib
import re
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from mmvim.ops import causal_conv1d_torch, selective_scan_torch
from mmvim.utils.kernel_sdists import SDISTS, unpacked_sources


def kernel_sources():
    """{'mamba_ssm' | 'causal_conv1d': unpacked source root} of the pinned
    sdists (:mod:`mmvim.utils.kernel_sdists`; fetched with pip into
    .cache/kernel-sdists on first use)."""
    return unpacked_sources()


# --------------------------------------------------------------------------
# helpers for the stand-ins
# --------------------------------------------------------------------------
def _check(cond: bool, entry: str, what: str) -> None:
    """TORCH_CHECK: a RuntimeError naming the entry point and the check."""
    if not cond:
        raise RuntimeError(f'{entry}: the CUDA kernel rejects this call: '
                           f'{what}')


def _shape(t: Tensor, entry: str, name: str, *shape: int) -> None:
    _check(tuple(t.shape) == tuple(shape), entry,
           f'{name} must have shape {tuple(shape)}, got {tuple(t.shape)}')


def _tensor(t, entry: str, name: str, optional: bool = False) -> None:
    """pybind's conversion: at::Tensor (or None for c10::optional)."""
    if t is None and optional:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f'{entry}: incompatible function arguments: {name} '
                        f'must be a Tensor{" or None" if optional else ""}, '
                        f'got {type(t).__name__}')


def _same_device(t: Tensor, like: Tensor, entry: str, name: str) -> None:
    # TORCH_CHECK(t.is_cuda()): here "the GPU" is the device of the input.
    _check(t.device == like.device, entry,
           f'{name} must be on the kernel device ({like.device}), got '
           f'{t.device}')


def _aligned_rows(t: Tensor, entry: str, name: str, row_dims: List[int],
                  nbytes: int) -> None:
    """Vector loads: every row (all index combinations of ``row_dims``)
    must start on an ``nbytes`` boundary, as the data pointer plus the row
    strides say (the kernels reinterpret the row pointer as a vector type;
    an unaligned one is a CUDA 'misaligned address' fault)."""
    size = t.element_size()
    offsets = [t.data_ptr()] + [t.stride(d) * size for d in row_dims
                                if t.shape[d] > 1]
    _check(all(o % nbytes == 0 for o in offsets), entry,
           f'{name} rows must be {nbytes}-byte aligned for the kernel\'s '
           f'vector loads (data_ptr % {nbytes} = {t.data_ptr() % nbytes}, '
           f'strides {t.stride()}, {size}-byte elements)')


@contextlib.contextmanager
def kernel_numerics():
    """What a compiled kernel sees: no autocast (a C++ entry point does its
    own dtype handling), so neither real CPU autocast nor
    :func:`cuda_autocast`'s emulation touches the stand-ins' arithmetic."""
    with torch.autocast('cpu', enabled=False):
        yield


def _grads(fn, inputs: List[Optional[Tensor]], cotangent: Tensor
           ) -> List[Optional[Tensor]]:
    """Gradients of ``fn(*leaves)`` against ``cotangent`` for the given
    inputs (None stays None), recomputing the forward with autograd.

    Runs in a worker thread: causal-conv1d calls its compiled module from
    inside a torch custom op, whose implementation runs below the autograd
    dispatch key (thread-local state that ``enable_grad`` cannot undo); a
    fresh thread has clean dispatch, autocast and torch-function-mode
    state, as a C++ kernel does."""
    leaves = [None if t is None else t.detach().requires_grad_()
              for t in inputs]
    present = [t for t in leaves if t is not None]

    def run():
        with kernel_numerics(), torch.enable_grad():
            return torch.autograd.grad(fn(*leaves), present, cotangent,
                                       allow_unused=True)
    with ThreadPoolExecutor(1) as pool:
        got = iter(pool.submit(run).result())
    result = []
    for t in leaves:
        if t is None:
            result.append(None)
        else:
            g = next(got)
            result.append(torch.zeros_like(t) if g is None else g)
    return result


def _into(like: Tensor, value: Tensor) -> Tensor:
    """``torch::empty_like(like)`` filled with ``value`` (the layout the C++
    allocates, the values our torch backend computed)."""
    out = torch.empty_like(like, dtype=value.dtype)
    out.copy_(value)
    return out


def _summary(**tensors) -> dict:
    return {k: None if v is None else dict(dtype=v.dtype,
                                           shape=tuple(v.shape),
                                           stride=v.stride())
            for k, v in tensors.items() if v is None or isinstance(v, Tensor)}


# --------------------------------------------------------------------------
# selective_scan_cuda
# --------------------------------------------------------------------------
FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
SCAN_CHUNK = 2048  # n_chunks = ceil(seqlen / 2048) in selective_scan.cpp


def _scan_launch(seqlen: int, itemsize: int):
    """(kIsEvenLen, vector bytes) of selective_scan_{fwd,bwd}_cuda: the
    launch picks (threads, items) by seqlen; with seqlen % (threads *
    items) == 0 the kernel loads rows as vectors of kNElts elements."""
    if seqlen <= 128:
        threads, items = 32, 4
    elif seqlen <= 256:
        threads, items = 32, 8
    elif seqlen <= 512:
        threads, items = 32, 16
    elif seqlen <= 1024:
        threads, items = 64, 16
    else:
        threads, items = 128, 16
    elts = 4 if itemsize == 4 else min(8, items)
    return seqlen % (threads * items) == 0, elts * itemsize


class SelectiveScanCuda:
    """Stand-in for mamba-ssm's compiled ``selective_scan_cuda`` module:
    ``fwd`` / ``bwd`` with the C++ signatures, checks and return lists, the
    arithmetic of :func:`mmvim.ops.selective_scan_torch`. ``calls`` records
    (entry, argument dtypes/shapes/strides) of every call."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    # -- the checks of selective_scan_fwd / selective_scan_bwd ------------
    def _check_common(self, entry, u, delta, A, B, C, D, z, delta_bias):
        for name, t in (('u', u), ('delta', delta), ('A', A), ('B', B),
                        ('C', C)):
            _tensor(t, entry, name)
        for name, t in (('D', D), ('z', z), ('delta_bias', delta_bias)):
            _tensor(t, entry, name, optional=True)
        input_type, weight_type = u.dtype, A.dtype
        _check(input_type in FLOAT_TYPES, entry,
               f'u must be float32, float16 or bfloat16, got {input_type}')
        _check(weight_type in (torch.float32, torch.complex64), entry,
               f'A must be float32 (or complex64), got {weight_type}')
        var_b, var_c = B.dim() >= 3, C.dim() >= 3
        _check(delta.dtype == input_type, entry,
               f'delta must have the dtype of u ({input_type}), got '
               f'{delta.dtype}')
        _check(B.dtype == (input_type if var_b else weight_type), entry,
               f'{"input-dependent" if var_b else "constant"} B must be '
               f'{input_type if var_b else weight_type}, got {B.dtype}')
        _check(C.dtype == (input_type if var_c else weight_type), entry,
               f'{"input-dependent" if var_c else "constant"} C must be '
               f'{input_type if var_c else weight_type}, got {C.dtype}')
        for name, t in (('delta', delta), ('A', A), ('B', B), ('C', C)):
            _same_device(t, u, entry, name)
        _check(u.dim() == 3, entry, f'u must be (batch, dim, seqlen), got '
               f'{tuple(u.shape)}')
        _check(u.stride(-1) == 1 or u.size(-1) == 1, entry,
               f'u.stride(-1) must be 1, got {u.stride(-1)}')
        _check(delta.stride(-1) == 1 or delta.size(-1) == 1, entry,
               f'delta.stride(-1) must be 1, got {delta.stride(-1)}')
        batch, dim, seqlen = u.shape
        _check(A.dim() == 2, entry, f'A must be (dim, dstate), got '
               f'{tuple(A.shape)}')
        dstate = A.size(1)
        n_groups = B.size(1) if var_b else 1
        _check(dstate <= 256, entry,
               'selective_scan only supports state dimension <= 256')
        _shape(delta, entry, 'delta', batch, dim, seqlen)
        _shape(A, entry, 'A', dim, dstate)
        for name, t, var in (('B', B, var_b), ('C', C, var_c)):
            if not var:
                _shape(t, entry, name, dim, dstate)
            else:
                _shape(t, entry, name, batch, n_groups, dstate, seqlen)
                _check(t.stride(-1) == 1 or t.size(-1) == 1, entry,
                       f'{name}.stride(-1) must be 1, got {t.stride(-1)}')
        for name, t in (('D', D), ('delta_bias', delta_bias)):
            if t is not None:
                _check(t.dtype == torch.float32, entry,
                       f'{name} must be float32, got {t.dtype}')
                _same_device(t, u, entry, name)
                _check(t.stride(-1) == 1 or t.size(-1) == 1, entry,
                       f'{name}.stride(-1) must be 1, got {t.stride(-1)}')
                _shape(t, entry, name, dim)
        if z is not None:
            _check(z.dtype == input_type, entry,
                   f'z must have the dtype of u ({input_type}), got '
                   f'{z.dtype}')
            _same_device(z, u, entry, 'z')
            _check(z.stride(-1) == 1 or z.size(-1) == 1, entry,
                   f'z.stride(-1) must be 1, got {z.stride(-1)}')
            _shape(z, entry, 'z', batch, dim, seqlen)
        # Not TORCH_CHECKs, but the kernel computes dim / n_groups with an
        # integer division and would silently pair channels with the wrong
        # B/C group.
        _check(dim % n_groups == 0, entry,
               f'dim={dim} must be divisible by the {n_groups} groups of B/C')
        if weight_type == torch.complex64:
            raise NotImplementedError('the stand-in has no complex path '
                                      '(mmvim never passes a complex A)')
        return batch, dim, seqlen, dstate, var_b, var_c

    def _check_vector_loads(self, entry, seqlen, rows):
        even, nbytes = _scan_launch(seqlen, rows[0][1].element_size())
        if even:
            for name, t, dims in rows:
                _aligned_rows(t, entry, name, dims, nbytes)

    # -- fwd ---------------------------------------------------------------
    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        entry = 'selective_scan_cuda.fwd'
        batch, dim, seqlen, dstate, var_b, var_c = self._check_common(
            entry, u, delta, A, B, C, D, z, delta_bias)
        _check(isinstance(delta_softplus, bool), entry,
               'delta_softplus must be a bool')
        rows = [('u', u, [0, 1]), ('delta', delta, [0, 1])]
        rows += [(n, t, [0, 1, 2]) for n, t, v in (('B', B, var_b),
                                                   ('C', C, var_c)) if v]
        if z is not None:
            rows.append(('z', z, [0, 1]))
        self._check_vector_loads(entry, seqlen, rows)
        self.calls.append(('fwd', _summary(u=u, delta=delta, A=A, B=B, C=C,
                                           D=D, z=z, delta_bias=delta_bias)))
        with kernel_numerics(), torch.no_grad():
            out = selective_scan_torch(u, delta, A, B, C, D, None,
                                       delta_bias, delta_softplus)
            x = self._chunk_states(u, delta, A, B, C, delta_bias,
                                   delta_softplus)
            result = [_into(delta, out), x]  # out = empty_like(delta)
            if z is not None:
                out_z = selective_scan_torch(u, delta, A, B, C, D, z,
                                             delta_bias, delta_softplus)
                result.append(_into(z, out_z))  # out_z = empty_like(z)
        return result

    @staticmethod
    def _chunk_states(u, delta, A, B, C, delta_bias, softplus) -> Tensor:
        """x (batch, dim, n_chunks, 2 * dstate) in A's dtype: for each
        2048-step chunk, the running scan value (a, h) at its last step,
        interleaved: a = prod exp(delta_t A) over steps 0..end (the x[..., 0::2]
        the kernel stores), h = the state (x[..., 1::2], which the wrapper
        returns as last_state and the backward reads between chunks)."""
        batch, dim, seqlen = u.shape
        n_chunks = -(-seqlen // SCAN_CHUNK)
        x = torch.empty(batch, dim, n_chunks, 2 * A.shape[1], dtype=A.dtype,
                        device=u.device)
        dt = delta.float()
        if delta_bias is not None:
            dt = dt + delta_bias.float()[:, None]
        if softplus:
            dt = torch.nn.functional.softplus(dt)
        total = dt.cumsum(-1)
        for c in range(n_chunks):
            end = min((c + 1) * SCAN_CHUNK, seqlen)

            Bc, Cc = (t if t.dim() == 2 else t[..., :end] for t in (B, C))
            _, last = selective_scan_torch(
                u[..., :end], delta[..., :end], A, Bc, Cc,
                delta_bias=delta_bias, delta_softplus=softplus,
                return_last_state=True)
            x[:, :, c, 0::2] = torch.exp(total[..., end - 1, None] * A)
            x[:, :, c, 1::2] = last
        return x

    # -- bwd ---------------------------------------------------------------
    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz,
            delta_softplus, recompute_out_z):
        entry = 'selective_scan_cuda.bwd'
        batch, dim, seqlen, dstate, var_b, var_c = self._check_common(
            entry, u, delta, A, B, C, D, z, delta_bias)
        for name, t in (('x', x), ('out', out), ('dz', dz)):
            _tensor(t, entry, name, optional=True)
        _tensor(dout, entry, 'dout')
        _check(isinstance(delta_softplus, bool)
               and isinstance(recompute_out_z, bool), entry,
               'delta_softplus and recompute_out_z must be bools')
        input_type = u.dtype
        _check(dout.dtype == input_type, entry,
               f'dout must have the dtype of u ({input_type}), got '
               f'{dout.dtype}')
        _same_device(dout, u, entry, 'dout')
        _check(dout.stride(-1) == 1 or dout.size(-1) == 1, entry,
               f'dout.stride(-1) must be 1, got {dout.stride(-1)}')
        _shape(dout, entry, 'dout', batch, dim, seqlen)
        if z is not None:
            _check(out is not None, entry, 'out is required when z is given')
            _check(out.dtype == input_type, entry,
                   f'out must be {input_type}, got {out.dtype}')
            _same_device(out, u, entry, 'out')
            _check(out.stride(-1) == 1 or out.size(-1) == 1, entry,
                   f'out.stride(-1) must be 1, got {out.stride(-1)}')
            _shape(out, entry, 'out', batch, dim, seqlen)
            if dz is not None:
                _check(dz.dtype == input_type, entry,
                       f'dz must be {input_type}, got {dz.dtype}')
                _same_device(dz, u, entry, 'dz')
                _check(dz.stride(-1) == 1 or dz.size(-1) == 1, entry,
                       f'dz.stride(-1) must be 1, got {dz.stride(-1)}')
                _shape(dz, entry, 'dz', batch, dim, seqlen)
        n_chunks = -(-seqlen // SCAN_CHUNK)
        if n_chunks > 1:
            _check(x is not None, entry, 'x is required for seqlen > 2048')
        if x is not None:
            _check(x.dtype == A.dtype, entry,
                   f'x must be {A.dtype}, got {x.dtype}')
            _same_device(x, u, entry, 'x')
            _check(x.is_contiguous(), entry, 'x must be contiguous')
            _shape(x, entry, 'x', batch, dim, n_chunks, 2 * dstate)
        rows = [('u', u, [0, 1]), ('delta', delta, [0, 1]),
                ('dout', dout, [0, 1])]
        rows += [(n, t, [0, 1, 2]) for n, t, v in (('B', B, var_b),
                                                   ('C', C, var_c)) if v]
        if z is not None:
            rows += [('z', z, [0, 1]), ('out', out, [0, 1])]
        self._check_vector_loads(entry, seqlen, rows)
        self.calls.append(('bwd', _summary(u=u, delta=delta, A=A, B=B, C=C,
                                           D=D, z=z, delta_bias=delta_bias,
                                           dout=dout)))

        def scan(u_, delta_, A_, B_, C_, D_, z_, bias_):
            return selective_scan_torch(u_, delta_, A_, B_, C_, D_, z_, bias_,
                                        delta_softplus)
        du, ddelta, dA, dB, dC, dD, dz_val, dbias = _grads(
            scan, [u, delta, A, B, C, D, z, delta_bias], dout)
        # du/ddelta = empty_like(u/delta); dA = zeros_like(A); dB/dC are
        # accumulated in fp32 and returned as .to(B.dtype); dD/ddelta_bias
        # zeros_like (fp32); dz the given buffer or empty_like(z).
        result = [_into(u, du), _into(delta, ddelta), _into(A, dA),
                  _into(B, dB), _into(C, dC),
                  None if D is None else _into(D, dD),
                  None if delta_bias is None else _into(delta_bias, dbias)]
        if z is not None:
            if dz is not None:
                dz.copy_(dz_val)
                result.append(dz)
            else:
                result.append(_into(z, dz_val))
        if recompute_out_z:
            with kernel_numerics(), torch.no_grad():
                result.append(_into(out, selective_scan_torch(
                    u, delta, A, B, C, D, z, delta_bias, delta_softplus)))
        return result


# --------------------------------------------------------------------------
# causal_conv1d_cuda
# --------------------------------------------------------------------------
class CausalConv1dCuda:
    """Stand-in for causal-conv1d's compiled ``causal_conv1d_cuda``:
    ``causal_conv1d_fwd`` / ``causal_conv1d_bwd`` write into the buffers
    the Python side allocates, after the C++ checks, computing with
    :func:`mmvim.ops.causal_conv1d_torch` (which computes as the kernel
    does: float32 sums for 16-bit x and float32 or 16-bit weight/bias, the
    output in x's dtype).
    ``seq_idx`` / ``initial_states`` / final states are checked but not
    computed: mmvim never passes them."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    @staticmethod
    def _check_common(entry, x, weight, bias, seq_idx, initial_states):
        _tensor(x, entry, 'x')
        _tensor(weight, entry, 'weight')
        for name, t in (('bias', bias), ('seq_idx', seq_idx),
                        ('initial_states', initial_states)):
            _tensor(t, entry, name, optional=True)
        _check(x.dtype in FLOAT_TYPES, entry,
               f'x must be float32, float16 or bfloat16, got {x.dtype}')
        _check(weight.dtype in FLOAT_TYPES, entry,
               f'weight must be float32, float16 or bfloat16, got '
               f'{weight.dtype}')
        _same_device(weight, x, entry, 'weight')
        _check(x.dim() == 3, entry,
               f'x must be (batch, dim, seqlen), got {tuple(x.shape)}')
        batch, dim, seqlen = x.shape
        width = weight.size(-1)
        _shape(weight, entry, 'weight', dim, width)
        _check(x.stride(2) == 1 or x.stride(1) == 1, entry,
               f'x must be contiguous along seqlen or channels, strides '
               f'{x.stride()}')
        channel_last = x.stride(1) == 1 and x.stride(2) > 1
        if channel_last:
            _check(dim % 8 == 0, entry, 'causal_conv1d only supports '
                   'channel dimension divisible by 8 for now (channel-last '
                   f'x), dim={dim}')
            _check(x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0, entry,
                   'causal_conv1d with channel last layout requires strides '
                   '(x.stride(0) and x.stride(2)) to be multiples of 8, got '
                   f'{x.stride()}')
        _check(2 <= width <= 4, entry,
               f'causal_conv1d only supports width between 2 and 4, got '
               f'{width}')
        if bias is not None:
            _check(bias.dtype == weight.dtype, entry,
                   f'bias must have the dtype of weight ({weight.dtype}), '
                   f'got {bias.dtype}')
            _same_device(bias, x, entry, 'bias')
            _check(bias.stride(-1) == 1, entry, 'bias.stride(-1) must be 1')
            _shape(bias, entry, 'bias', dim)
        if seq_idx is not None:
            _check(channel_last, entry,
                   'seq_idx is only supported for channel last layout')
            _check(seq_idx.dtype == torch.int32 and seq_idx.is_contiguous(),
                   entry, 'seq_idx must be contiguous int32')
            _shape(seq_idx, entry, 'seq_idx', batch, seqlen)
        if initial_states is not None:
            _check(channel_last, entry,
                   'initial_states is only supported for channel last layout')
            _check(initial_states.dtype == x.dtype, entry,
                   'initial_states must have the dtype of x')
            _shape(initial_states, entry, 'initial_states', batch, dim,
                   width - 1)
            _check(initial_states.stride(1) == 1, entry,
                   'initial_states.stride(1) must be 1')
        # vector loads along the sequence (channel-first, seqlen % kNElts
        # == 0) or along channels (channel-last): 16-byte aligned rows
        nbytes = 16
        if channel_last:
            _aligned_rows(x, entry, 'x', [0, 2], nbytes)
        elif seqlen % (nbytes // x.element_size()) == 0:
            _aligned_rows(x, entry, 'x', [0, 1], nbytes)
        return batch, dim, seqlen, width, channel_last

    def causal_conv1d_fwd(self, x, weight, bias, seq_idx, initial_states,
                          out, final_states_out, silu_activation):
        entry = 'causal_conv1d_cuda.causal_conv1d_fwd'
        batch, dim, seqlen, width, channel_last = self._check_common(
            entry, x, weight, bias, seq_idx, initial_states)
        _tensor(out, entry, 'out')
        _tensor(final_states_out, entry, 'final_states_out', optional=True)
        _check(isinstance(silu_activation, bool), entry,
               'silu_activation must be a bool')
        if final_states_out is not None:
            _check(channel_last, entry,
                   'final_states is only supported for channel last layout')
        self.calls.append(('fwd', _summary(x=x, weight=weight, bias=bias,
                                           out=out)))
        if seq_idx is not None or initial_states is not None \
                or final_states_out is not None:
            raise NotImplementedError('stand-in: mmvim passes no seq_idx / '
                                      'initial or final states')
        with kernel_numerics(), torch.no_grad():
            out.copy_(self._conv(x, weight, bias, silu_activation))

    @staticmethod
    def _conv(x, weight, bias, silu):
        return causal_conv1d_torch(x, weight, bias, 'silu' if silu else None)

    def causal_conv1d_bwd(self, x, weight, bias, dout, seq_idx,
                          initial_states, dfinal_states, dx, dweight, dbias,
                          dinitial_states, silu_activation):
        entry = 'causal_conv1d_cuda.causal_conv1d_bwd'
        for name, t in (('dout', dout), ('dx', dx), ('dweight', dweight)):
            _tensor(t, entry, name)
        for name, t in (('dfinal_states', dfinal_states), ('dbias', dbias),
                        ('dinitial_states', dinitial_states)):
            _tensor(t, entry, name, optional=True)
        _check(isinstance(silu_activation, bool), entry,
               'silu_activation must be a bool')
        _same_device(dout, x, entry, 'dout')
        _check((bias is None) == (dbias is None), entry,
               'bias and dbias must both be given or both be None')
        batch, dim, seqlen, width, channel_last = self._check_common(
            entry, x, weight, bias, seq_idx, initial_states)
        _shape(dout, entry, 'dout', batch, dim, seqlen)
        # the C++ makes dout contiguous in the layout of x itself
        if not channel_last and dout.stride(2) != 1:
            dout = dout.contiguous()
        if channel_last and dout.stride(1) != 1:
            dout = dout.transpose(-1, -2).contiguous().transpose(-1, -2)
        if channel_last:
            _check(dout.stride(2) % 8 == 0 and dout.stride(0) % 8 == 0,
                   entry, 'causal_conv1d with channel last layout requires '
                   'strides (dout.stride(0) and dout.stride(2)) to be '
                   f'multiples of 8, got {dout.stride()}')
        _check(dx.dtype == x.dtype, entry,
               f'dx must have the dtype of x ({x.dtype}), got {dx.dtype}')
        _same_device(dx, x, entry, 'dx')
        _shape(dx, entry, 'dx', batch, dim, seqlen)
        if channel_last:
            _check(dx.stride(1) == 1, entry,
                   'dx.stride(1) must be 1 (channel-last x)')
        else:
            _check(dx.stride(2) == 1, entry, 'dx.stride(2) must be 1')
        if dfinal_states is not None:
            _check(channel_last, entry, 'dfinal_states is only supported '
                   'for channel last layout')
        if dinitial_states is not None:
            _check(dinitial_states.stride(1) == 1, entry,
                   'dinitial_states.stride(1) must be 1')
        # the kernel accumulates into dweight / dbias as float32 buffers
        _check(dweight.dtype == torch.float32 and dweight.shape
               == weight.shape, entry, 'dweight must be a float32 buffer '
               'shaped like weight')
        if dbias is not None:
            _check(dbias.dtype == torch.float32 and dbias.shape
                   == bias.shape, entry, 'dbias must be a float32 buffer '
                   'shaped like bias')
        self.calls.append(('bwd', _summary(x=x, weight=weight, bias=bias,
                                           dout=dout)))
        if seq_idx is not None or initial_states is not None \
                or dfinal_states is not None:
            raise NotImplementedError('stand-in: mmvim passes no seq_idx / '
                                      'initial or final states')
        gx, gw, gb = _grads(
            lambda x_, w_, b_: self._conv(x_, w_, b_, silu_activation),
            [x, weight, bias], dout)
        dx.copy_(gx)
        dweight.copy_(gw)
        if dbias is not None:
            dbias.copy_(gb)

    def causal_conv1d_update(self, *args, **kwargs):
        raise NotImplementedError('stand-in: causal_conv1d_update '
                                  '(decoding) is not used by mmvim')


# --------------------------------------------------------------------------
# loading the real interface code
# --------------------------------------------------------------------------
class KernelInterfaces(types.SimpleNamespace):
    """selective_scan_fn, causal_conv1d_fn (the real Python interface
    functions), scan / conv (the stand-ins behind them), roots (sources)."""


_LOADED: Optional[KernelInterfaces] = None
_PRIVATE = ('mamba_ssm', 'causal_conv1d', 'selective_scan_cuda',
            'causal_conv1d_cuda')


def _private(name: str) -> bool:
    return any(name == p or name.startswith(p + '.') for p in _PRIVATE)


def _module(name: str, path: Optional[Path] = None, **attrs
            ) -> types.ModuleType:
    mod = types.ModuleType(name)
    if path is not None:
        mod.__path__ = [str(path)]
    mod.__dict__.update(attrs)
    return mod


def load_interfaces() -> KernelInterfaces:
    """Import mamba-ssm's ``selective_scan_interface`` and causal-conv1d's
    ``causal_conv1d_interface`` from the sdist sources with the stand-ins
    as their compiled modules (once per process: causal-conv1d registers
    torch custom ops). ``mamba_ssm/__init__.py`` (which imports the whole
    model zoo, Triton kernels included) is not run: ``mamba_ssm`` is a bare
    package object pointing at the sources."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    try:
        import einops  # noqa: F401  (selective_scan_interface imports it)
    except ImportError as exc:
        raise ImportError('the CUDA glue contract test needs einops (in '
                          "mmvim's dev extra): run make install") from exc
    roots = kernel_sources()
    scan, conv = SelectiveScanCuda(), CausalConv1dCuda()

    def no_triton(*args, **kwargs):
        raise NotImplementedError('Triton layer norm: not part of the glue')

    mamba = roots['mamba_ssm'] / 'mamba_ssm'
    stubs = {
        'selective_scan_cuda': _module('selective_scan_cuda', fwd=scan.fwd,
                                       bwd=scan.bwd),
        'causal_conv1d_cuda': _module(
            'causal_conv1d_cuda', causal_conv1d_fwd=conv.causal_conv1d_fwd,
            causal_conv1d_bwd=conv.causal_conv1d_bwd,
            causal_conv1d_update=conv.causal_conv1d_update),
        'mamba_ssm': _module('mamba_ssm', mamba),
        'mamba_ssm.ops.triton.layer_norm': _module(
            'mamba_ssm.ops.triton.layer_norm', _layer_norm_fwd=no_triton),
    }
    saved = {k: v for k, v in sys.modules.items() if _private(k)}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    sys.path.insert(0, str(roots['causal_conv1d']))
    try:
        ssi = importlib.import_module('mamba_ssm.ops.selective_scan_interface')
        cci = importlib.import_module('causal_conv1d.causal_conv1d_interface')
    finally:
        sys.path.remove(str(roots['causal_conv1d']))
        for k in [k for k in sys.modules if _private(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    for mod, root in ((ssi, roots['mamba_ssm']), (cci,
                                                  roots['causal_conv1d'])):
        assert Path(mod.__file__).resolve().is_relative_to(root.resolve()), \
            mod.__file__
    assert ssi.selective_scan_cuda is stubs['selective_scan_cuda']
    assert ssi.causal_conv1d_fn is cci.causal_conv1d_fn
    _LOADED = KernelInterfaces(
        selective_scan_fn=ssi.selective_scan_fn,
        causal_conv1d_fn=cci.causal_conv1d_fn, scan=scan, conv=conv,
        roots=roots)
    return _LOADED


# --------------------------------------------------------------------------
# torch.autocast('cuda')'s policy on CPU tensors
# --------------------------------------------------------------------------
def _autocast_lists() -> Dict[str, frozenset]:
    """CUDA autocast's op lists, read from the installed torch's
    ``ATen/autocast_mode.h`` (the macros CUDA's registrations expand).
    ``cat``/``stack``/``index_copy`` are registered as 'promote' in
    autocast_mode.cpp itself, outside the header."""
    header = Path(torch.__file__).parent / 'include' / 'ATen' / \
        'autocast_mode.h'
    text = header.read_text()
    lists = {}
    for key, macro in (('lower', 'AT_FORALL_LOWER_PRECISION_FP'),
                       ('fp32', 'AT_FORALL_FP32'),
                       ('fp32_set_opt_dtype', 'AT_FORALL_FP32_SET_OPT_DTYPE'),
                       ('promote', 'AT_FORALL_PROMOTE')):
        match = re.search(rf'#define {macro}\(_\)((?:.*\\\n)*.*\n)', text)
        if match is None:
            raise RuntimeError(f'{macro} not found in {header}')
        lists[key] = frozenset(re.findall(r'_\((\w+)', match.group(1)))
    lists['promote'] |= {'cat', 'stack', 'index_copy'}
    # norm is in AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE (fp32, dtype
    # appended)
    lists['fp32'] |= {'norm'}
    return lists


# Python-level names of aten ops in the lists (operators call the aten op)
_ALIASES = {'__matmul__': 'matmul', '__rmatmul__': 'matmul',
            '__pow__': 'pow', '__rpow__': 'pow'}


def _eligible(t) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point() \
        and t.dtype != torch.float64


def _map(obj, fn):
    """Apply ``fn`` to tensors in ``obj`` and in lists/tuples in it."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, fn) for o in obj)
    return obj


def _tensors(obj):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


class _CudaAutocastPolicy(TorchFunctionMode):
    """Casts the floating arguments of the ops in CUDA autocast's lists
    (by the torch-level function's name), as ``torch.autocast('cuda')``
    does; active while CPU autocast is enabled (so ``torch.autocast(...,
    enabled=False)`` regions, and the stand-ins' kernel_numerics(), turn it
    off as they turn real autocast off)."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = _autocast_lists()
        self.seen: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        name = _ALIASES.get(name, name)
        if not torch.is_autocast_enabled('cpu'):
            return func(*args, **kwargs)
        low = torch.get_autocast_dtype('cpu')
        lists = self.lists
        if name in lists['lower']:
            def cast(t):
                return t.to(low) if _eligible(t) else t
        elif name in lists['fp32']:
            def cast(t):
                return t.float() if _eligible(t) else t
        elif name in lists['fp32_set_opt_dtype']:
            first = next(_tensors(args), None)
            if _eligible(first) and first.dtype != torch.float32 \
                    and kwargs.get('dtype') is None:
                kwargs = dict(kwargs, dtype=torch.float32)

            def cast(t):
                return t
        elif name in lists['promote']:
            ts = [t for t in _tensors((args, list(kwargs.values())))
                  if _eligible(t)]
            wide = (torch.float32 if any(t.dtype == torch.float32 for t in ts)
                    else None)

            def cast(t):
                return t.to(wide) if wide is not None and _eligible(t) else t
        else:
            # not autocast-wrapped on CUDA: runs in its inputs' dtypes
            with torch.autocast('cpu', enabled=False):
                return func(*args, **kwargs)
        self.seen.add(name)
        args = _map(args, cast)
        kwargs = {k: _map(v, cast) for k, v in kwargs.items()}
        # inside an autocast-wrapped op nothing is cast again
        with torch.autocast('cpu', enabled=False):
            return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype):
    """``torch.autocast('cuda', dtype=dtype)`` for CPU tensors, as far as
    dtypes go: the ops on CUDA autocast's lists (read from the installed
    torch's ``ATen/autocast_mode.h``) get their floating inputs cast as on
    CUDA: linear / conv / matmul / einsum / bmm ... to ``dtype``; exp /
    softplus / layer_norm / pow ... to float32; sum / cumsum / softmax ...
    accumulate to float32; cat / stack / addcmul ... promote to the widest
    input. Every other op runs in its inputs' dtypes, and real CPU autocast
    (whose lists differ, e.g. exp and layer_norm stay in bf16 there) is
    switched off around each op; it is entered only as the on/off flag that
    ``torch.autocast('cpu', enabled=False)`` regions clear.

    What is not emulated: the lists are applied to the torch-level
    functions the code calls (F.linear, torch.einsum, Tensor.__matmul__,
    ...); an op outside the lists that decomposes into listed ops inside
    C++ (none in mmvim's mixers) would get its inner ops cast on CUDA but
    not here. Numerics are CPU's (bf16/fp16 CPU kernels), not cuBLAS'.
    """
    policy = _CudaAutocastPolicy()
    with torch.autocast('cpu', dtype=dtype), policy:
        yield policy


__all__ = ['kernel_sources', 'load_interfaces', 'SelectiveScanCuda',
           'CausalConv1dCuda', 'cuda_autocast', 'kernel_numerics', 'SDISTS']
