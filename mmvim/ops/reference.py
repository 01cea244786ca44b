"""The sequential reference loop that mamba-ssm ships as ``selective_scan_ref``.

Re-implemented here (same algorithm and the same tensor operations: the
decays and inputs are materialised for the whole sequence as
(batch, dim, L, N) tensors, then a Python loop over L updates the state and
contracts it with C) so that benchmarks can time our torch backend against
it in the same run without importing mamba-ssm, which cannot be imported on
a CPU machine. It is not used by the models.

One deliberate difference: the silu(z) gate is computed in the compute
dtype (float32, or float64), as mamba-ssm's CUDA kernel computes it;
``selective_scan_ref`` evaluates ``F.silu(z)`` on the 16-bit z itself, which
rounds the gate to z's dtype (the only 16-bit intermediate it has, and the
reason its fp16 gradients of A, B, C, D and delta_bias can be off by more
than mamba-ssm's own test tolerances; see tests/test_half_precision.py).
For float32 / float64 inputs the two are identical.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import compute_dtype


def selective_scan_loop(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                        C: Tensor, D: Optional[Tensor] = None,
                        z: Optional[Tensor] = None,
                        delta_bias: Optional[Tensor] = None,
                        delta_softplus: bool = False,
                        return_last_state: bool = False):
    """Same contract as :func:`mmvim.ops.selective_scan` (real A only)."""
    dtype_in = u.dtype
    # float32 math as the kernel (float64 kept, for gradient references)
    cdt = compute_dtype(dtype_in)
    u = u.to(cdt)
    delta = delta.to(cdt)
    A = A.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(cdt)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    B = B.to(cdt)
    C = C.to(cdt)
    if B.dim() == 4:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    decay = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    if B.dim() == 2:
        drive = torch.einsum('bdl,dn,bdl->bdln', delta, B, u)
    elif B.dim() == 3:
        drive = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
    else:
        drive = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    state = A.new_zeros((batch, dim, A.shape[1]))
    ys = []
    for i in range(length):
        state = decay[:, :, i] * state + drive[:, :, i]
        if C.dim() == 2:
            y = torch.einsum('bdn,dn->bd', state, C)
        elif C.dim() == 3:
            y = torch.einsum('bdn,bn->bd', state, C[:, :, i])
        else:
            y = torch.einsum('bdn,bdn->bd', state, C[:, :, :, i])
        ys.append(y)
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D[:, None]
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, state) if return_last_state else out
