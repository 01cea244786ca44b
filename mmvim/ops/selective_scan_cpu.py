"""The ``cpu`` backend of :func:`mmvim.ops.selective_scan`: mmvim's compiled
C++ kernel (``mmvim._ext``, sources in ``mmvim/csrc``).

Importing this module imports the extension, so it fails (and the dispatcher
falls back to the torch backend with one warning) when the extension was not
built. Same contract and numerics as the torch backend
(:func:`mmvim.ops.selective_scan_torch`):

* float32 and float64 are computed in their own precision; 16-bit inputs
  (e.g. under ``torch.autocast('cpu', dtype=torch.bfloat16)``) in float32,
  with the output cast back to the input dtype and gradients in the input
  dtypes, as mamba-ssm's CUDA kernel does (:mod:`mmvim.ops.precision`);
* softplus passes values above 20 through unchanged, as the kernel does;
* memory is linear in L: the forward keeps the state at the start of every
  chunk of ``mmvim._ext.CHUNK`` steps and the backward recomputes a chunk's
  states from it (never a (batch, dim, L, N) tensor);
* ``reverse`` (channel blocks that run backwards in time) is done in the
  kernel: those items read and write their time axis from the end, so
  nothing is flipped (the other backends flip);
* the work is split into (batch, group, block of channels) items run by
  torch's intra-op threads (``at::parallel_for``); partial gradients are
  reduced in a fixed order, so results do not depend on the thread count.

The kernel is vectorised over channels (one SIMD vector holds a block of
channels of one B/C group), which suits d_state = 1 (VMamba) and d_state =
16 (Vim) alike, and is compiled for AVX-512, AVX2+FMA and the baseline
instruction set; the best one the CPU supports is picked at import
(``mmvim._ext.isa()`` says which, ``mmvim._ext.set_isa`` forces another).
``MMVIM_CPU_ISA=avx512|avx2|generic`` forces one for the whole process (e.g.
to run the test suite on the baseline path of an AVX-512 machine);
:func:`isa_info` says what this CPU runs and what is in use.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _ext
from .precision import compute_dtype

__all__ = ['selective_scan_cpu', 'BUILD_HINT', 'ISA_ENV', 'ISAS',
           'supported_isas', 'isa_info']

BUILD_HINT = ('build mmvim\'s C++ extension: `make install` (or `python '
              'setup.py build_ext --inplace` in the repository) with a C++ '
              'compiler such as g++ installed')


#: forces the kernels' instruction set for the whole process
ISA_ENV = 'MMVIM_CPU_ISA'
#: every instruction set the extension is compiled for, widest first
ISAS = ('avx512', 'avx2', 'generic')


def supported_isas() -> List[str]:
    """The instruction sets of :data:`ISAS` this CPU runs, widest first
    (the one in use is left as it was)."""
    current = _ext.isa()
    found = []
    for isa in ISAS:
        try:
            _ext.set_isa(isa)
            found.append(isa)
        except RuntimeError:  # the CPU lacks it
            pass
    _ext.set_isa(current)
    return found


def isa_info() -> Dict[str, Union[str, List[str]]]:
    """{'active': the instruction set the kernels use now, 'supported':
    those this CPU runs (widest first), 'forced': the value of
    ``MMVIM_CPU_ISA`` ('' when unset)}."""
    return dict(active=_ext.isa(), supported=supported_isas(),
                forced=os.environ.get(ISA_ENV, ''))


def _apply_isa_env() -> None:
    """Use the instruction set named by ``MMVIM_CPU_ISA`` (unset or
    'auto': the widest this CPU runs). A value the CPU cannot run fails the
    import with the reason, so forcing a path never silently runs another."""
    wanted = os.environ.get(ISA_ENV, '').strip().lower()
    if wanted in ('', 'auto'):
        return
    if wanted not in ISAS:
        raise RuntimeError(
            f'{ISA_ENV}={wanted!r} is not an instruction set of mmvim._ext; '
            f'use one of {", ".join(ISAS)} or auto (or unset it)')
    try:
        _ext.set_isa(wanted)
    except RuntimeError as exc:
        raise RuntimeError(
            f'{ISA_ENV}={wanted}: {exc}. This CPU runs '
            f'{", ".join(supported_isas())}; set one of those or unset '
            f'{ISA_ENV}') from None


_apply_isa_env()


def _bc_layout(mat: Tensor, cdt: torch.dtype) -> Tensor:
    """B/C in a contract shape -> the kernel's: constant (dim, N) as is,
    time-varying (batch, N, L) / (batch, G, N, L) -> (batch, G, L, N)."""
    if mat.dim() == 2:
        return mat.to(cdt).contiguous()
    if mat.dim() == 3:
        mat = mat.unsqueeze(1)
    return mat.transpose(-1, -2).to(cdt).contiguous()


class _SelectiveScanCpu(torch.autograd.Function):
    """Inputs already in the kernel's dtype and layout (see
    :func:`selective_scan_cpu`); returns (out, last_state)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                delta_bias: Optional[Tensor], softplus: bool,
                reverse: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        needs_grad = any(ctx.needs_input_grad[:8])
        out, last, states = _ext.selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, softplus, needs_grad,
            reverse)
        ctx.set_materialize_grads(False)
        ctx.softplus = softplus
        ctx.reverse = reverse
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        return out, last

    @staticmethod
    def backward(ctx, dout: Optional[Tensor], dlast: Optional[Tensor]):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        if dlast is not None:
            dlast = dlast.contiguous()
        du, ddelta, dA, dB, dC, dD, dz, dbias = _ext.selective_scan_bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.softplus, states, dout,
            dlast, ctx.reverse)
        return (du, ddelta, dA, dB, dC, dD if D is not None else None,
                dz if z is not None else None,
                dbias if delta_bias is not None else None, None, None)


def selective_scan_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                       C: Tensor, D: Optional[Tensor] = None,
                       z: Optional[Tensor] = None,
                       delta_bias: Optional[Tensor] = None,
                       delta_softplus: bool = False,
                       return_last_state: bool = False,
                       reverse: Optional[Sequence[bool]] = None):
    """Compiled CPU selective scan; the contract of
    :func:`mmvim.ops.selective_scan` (shapes checked there). ``reverse``
    runs in the kernel: the flagged channel blocks read and write their
    time axis from the end, so nothing is flipped."""
    dtype_in = u.dtype
    cdt = compute_dtype(dtype_in)

    def dense(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(cdt).contiguous()

    out, last = _SelectiveScanCpu.apply(
        dense(u), dense(delta), dense(A), _bc_layout(B, cdt),
        _bc_layout(C, cdt), dense(D), dense(z), dense(delta_bias),
        bool(delta_softplus),
        None if reverse is None else torch.tensor(reverse, dtype=torch.bool))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out
