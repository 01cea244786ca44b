"""The selective scan as it is captured by graph exporters (ONNX).

When a model is traced for export (``torch.onnx.export``, ``torch.export``),
:func:`mmvim.ops.selective_scan` routes here instead of to a backend: the
backends' Python loops over time would be unrolled into the graph (one set
of nodes per step, tens of thousands per model), and their compiled kernels
cannot be traced at all. Here the whole scan is one custom operator,
``mmvim::ssm_scan``, whose ONNX translation
(:mod:`mmvim.deploy.onnx_scan`) is made of standard ONNX operators only
(a ``Loop`` over chunks of time steps), so the graph does not grow with the
sequence length and the length may be a dynamic dimension.

The algorithm, the same in the ONNX graph and in the eager implementation
below (which exists so that its rounding can be checked against the
float64 reference without an ONNX runtime):

* the sequence is padded at its end to a whole number of chunks of
  ``chunk`` steps (padded steps come after every real step, so they change
  no output) and processed chunk by chunk;
* for a chunk, everything element-wise is computed on the chunk while it is
  in cache: the step bias and softplus, ``a = exp(dt * A)``,
  ``x = dt * u * B``; then the state advances step by step,
  ``h = a[t] * h + x[t]``, the arithmetic of the sequential definition and
  of the torch backend (only decays in [0, 1] are multiplied; nothing
  divides by a cumulative decay, so no step size can overflow anything);
  ``y = C . h + D * u``, gated by ``silu(z)``.

Other formulations were measured and dropped (docs/deploy.md): a
log-depth (Hillis-Steele) scan inside the chunk, and cutting the sequence
into segments run side by side with a second pass for their start states;
in onnxruntime neither was faster, because the element-wise passes over
the whole sequence, not the number of steps, dominate.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .scan_layout import check_reverse, flip_bc, flip_blocks

__all__ = ['selective_scan_export', 'ssm_scan',
           'ssm_scan_reference', 'softplus_export', 'CHUNK']

# Time steps per chunk of the ONNX Loop (docs/deploy.md: 16 and 32 were the
# fastest in onnxruntime for Vim, VMamba and MambaVision scans; the chunk
# tensors stay in cache and a Loop iteration's fixed cost is amortised).
CHUNK = 16


def softplus_export(x: Tensor) -> Tensor:
    """softplus(x) = log(1 + exp(x)) as ``relu(x) + log1p(exp(-abs(x)))``, with
    log1p(e) = log(u) + (e - (u - 1)) / u, u = 1 + e (accurate to a few
    ulp also where e is below the float epsilon; ONNX has no Log1p).

    F.softplus exports as ONNX ``Softplus`` plus a ``Where`` for its
    threshold; onnxruntime runs that about 3x slower than these
    vectorised element-wise operators, and ``Softplus`` computes
    log(exp(x) + 1), which loses every step size below 6e-8.
    """
    e = torch.exp(-x.abs())
    u = 1 + e
    return x.relu() + (torch.log(u) + (e - (u - 1)) / u)


# ---------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------
def ssm_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                       C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                       delta_bias: Optional[Tensor], softplus: bool,
                       chunk: int) -> Tensor:
    """The operator in torch, computed as its ONNX graph computes it (module
    docstring). u, delta, z (b, D, L); A (D, N); B, C (b, G, N, L); D,
    delta_bias (D,); returns y (b, D, L)."""
    batch, dim, length = u.shape
    groups = B.shape[1]
    pad = (-length) % chunk

    def time_major(x: Optional[Tensor]) -> Optional[Tensor]:
        """(b, X.., L) -> (L + pad, b, X..) with zero steps appended."""
        if x is None:
            return None
        x = x.permute((x.dim() - 1,) + tuple(range(x.dim() - 1)))
        return torch.cat((x, x.new_zeros((pad,) + tuple(x.shape[1:]))), 0)

    u, delta, z, B, C = (time_major(t) for t in (u, delta, z, B, C))
    A = A.reshape(groups, dim // groups, -1).transpose(1, 2)  # (G, N, H)
    D = None if D is None else D.reshape(groups, -1)
    bias = None if delta_bias is None else delta_bias.reshape(groups, -1)
    h = u.new_zeros((batch,) + tuple(A.shape))  # (b, G, N, H)
    ys = []
    def piece(x: Tensor, s: int) -> Tensor:  # chunk from step s, (T, b, G, X)
        return x[s:s + chunk].reshape(chunk, batch, groups, -1)

    for s in range(0, length + pad, chunk):
        uc, dt = piece(u, s), piece(delta, s)
        if bias is not None:
            dt = dt + bias
        if softplus:
            dt = softplus_export(dt)
        a = torch.exp(dt[:, :, :, None] * A)
        x = (dt * uc)[:, :, :, None] * piece(B, s)[..., None]
        states = []
        for t in range(chunk):
            h = a[t] * h + x[t]
            states.append(h)
        y = torch.matmul(piece(C, s)[:, :, :, None],
                         torch.stack(states, 0))[:, :, :, 0]
        if D is not None:
            y = y + uc * D
        if z is not None:
            zc = piece(z, s)
            y = y * (zc * torch.sigmoid(zc))
        ys.append(y.reshape(chunk, batch, dim))
    return torch.cat(ys, 0)[:length].permute(1, 2, 0)


@torch.library.custom_op('mmvim::ssm_scan', mutates_args=())
def ssm_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Optional[Tensor], z: Optional[Tensor],
             delta_bias: Optional[Tensor], softplus: bool,
             chunk: int) -> Tensor:
    """:func:`mmvim.ops.selective_scan` with B and C grouped (batch, G, N,
    L), computed in chunks of ``chunk`` steps (module docstring)."""
    return ssm_scan_reference(u, delta, A, B, C, D, z, delta_bias, softplus,
                              chunk)


@ssm_scan.register_fake
def _(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
      D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
      softplus: bool, chunk: int) -> Tensor:
    return u.new_empty(u.shape)


# ---------------------------------------------------------------------------
# selective_scan's contract on top of it
# ---------------------------------------------------------------------------
def _grouped(mat: Tensor, groups: int, batch: int, length: int) -> Tensor:
    """B or C in a contract shape -> (batch, groups, N, L)."""
    if mat.dim() == 2:  # constant (dim, N): one group per channel
        return mat[None, :, :, None].expand(batch, -1, -1, length)
    if mat.dim() == 3:  # (batch, N, L): shared by all channels
        mat = mat.unsqueeze(1)
    if mat.shape[1] != groups:
        mat = mat.repeat_interleave(groups // mat.shape[1], dim=1)
    return mat


def selective_scan_export(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                          C: Tensor, D: Optional[Tensor] = None,
                          z: Optional[Tensor] = None,
                          delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = False,
                          return_last_state: bool = False,
                          reverse: Optional[Sequence[bool]] = None,
                          chunk: int = CHUNK) -> Tensor:
    """:func:`mmvim.ops.selective_scan` (same contract and arguments,
    already checked) as ``mmvim::ssm_scan``."""
    if return_last_state:
        raise NotImplementedError(
            'selective_scan: return_last_state is not supported while a '
            'model is exported (no mmvim model uses it); compute the last '
            'state outside the exported graph.')
    from .scan_export_kernel import (
        exporting_kernel_op,
        selective_scan_kernel_export,
    )
    if exporting_kernel_op():  # opt-in: mmvim's kernel as a custom op
        return selective_scan_kernel_export(u, delta, A, B, C, D, z,
                                            delta_bias, delta_softplus,
                                            reverse)
    flags = check_reverse(reverse, u.shape[1])
    if flags is not None:  # the torch backend's flips, the same numbers
        u, delta, z = (flip_blocks(t, flags) for t in (u, delta, z))
        B, C = flip_bc(B, flags), flip_bc(C, flags)
    dtype_in = u.dtype
    cdt = torch.float64 if dtype_in == torch.float64 else torch.float32
    batch, dim, length = u.shape
    gb = 1 if B.dim() == 3 else dim if B.dim() == 2 else B.shape[1]
    gc = 1 if C.dim() == 3 else dim if C.dim() == 2 else C.shape[1]
    groups = math.lcm(gb, gc)

    def cast(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(cdt)

    y = ssm_scan(cast(u), cast(delta), cast(A),
                 _grouped(cast(B), groups, batch, length),
                 _grouped(cast(C), groups, batch, length), cast(D), cast(z),
                 cast(delta_bias), bool(delta_softplus), chunk)
    y = y.to(dtype_in)
    return y if flags is None else flip_blocks(y, flags)
