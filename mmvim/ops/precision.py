"""The half-precision contract shared by the ``torch`` and ``cpu`` backends.

mamba-ssm's and causal-conv1d's CUDA kernels take float16 / bfloat16
activations (what ``torch.autocast`` hands them) next to float32 weights,
load every value into a float32 register and compute everything there: the
step ``delta + delta_bias``, softplus, the recurrence, the silu(z) gate, the
convolution sums, and the gradients they accumulate. Only the inputs and the
outputs are 16-bit; each gradient is returned in its input's dtype. Our
backends do the same by casting the inputs up once to :func:`compute_dtype`
(float64 stays float64, so gradcheck works), computing with autocast off
(:func:`autocast_off`, or autocast would put matmuls and convs back into
16 bits inside the op) and casting the output back; autograd of those casts
returns each gradient in its input's dtype.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ['compute_dtype', 'autocast_off']


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes in for inputs of ``dtypes``: float64 if
    any of them is float64, float32 otherwise (float16 / bfloat16 / float32
    inputs are all computed in float32, as the CUDA kernels do)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def autocast_off(device_type: str) -> ContextManager:
    """Autocast disabled on ``device_type`` (a no-op where the device type
    has no autocast). The ops compute in :func:`compute_dtype` by
    themselves, as the kernels do; under AMP, autocast would otherwise run
    their matmuls / convs in half precision."""
    available = getattr(torch.amp, 'is_autocast_available', None)
    if available is not None and not available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
