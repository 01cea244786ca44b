"""Causal depthwise conv1d (+ optional SiLU) behind the mmvim backend switch.

``causal_conv1d(x, weight, bias=None, activation=None)`` has the contract of
causal-conv1d's ``causal_conv1d_fn`` for the arguments the vision backbones
use: ``x`` (batch, dim, L), ``weight`` (dim, width), ``bias`` (dim,) or None,
``activation`` None, 'silu' or 'swish'. Output (batch, dim, L): position t
sees inputs t-width+1 .. t (left zero padding), as ``nn.Conv1d(dim, dim,
width, groups=dim, padding=width-1)`` followed by dropping the last width-1
outputs, which is how the official Mamba block computes it without the kernel.

Precision as causal-conv1d's CUDA kernel: ``x`` may be float16 / bfloat16
next to a float32 (or 16-bit) weight and bias, as autocast hands them; the
sums, the bias and the SiLU are computed in float32 (float64 when an input
is float64) and only the output is rounded to ``x.dtype``; the gradients
come back in each input's dtype (see :mod:`mmvim.ops.precision`).
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .dispatch import kernel, resolve_backend
from .precision import autocast_off, compute_dtype

__all__ = ['causal_conv1d', 'causal_conv1d_torch']


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor],
           activation: Optional[str]) -> None:
    if x.dim() != 3:
        raise ValueError(f'causal_conv1d: x must be (batch, dim, L), got '
                         f'{tuple(x.shape)}')
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f'causal_conv1d: weight must be (dim={x.shape[1]}, '
                         f'width), got {tuple(weight.shape)}; an nn.Conv1d '
                         'weight (dim, 1, width) needs .squeeze(1)')
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f'causal_conv1d: bias must be ({x.shape[1]},), got '
                         f'{tuple(bias.shape)}')
    if activation not in (None, 'silu', 'swish'):
        raise ValueError(f'causal_conv1d: activation must be None, "silu" or '
                         f'"swish", got {activation!r}')


def causal_conv1d_torch(x: Tensor, weight: Tensor,
                        bias: Optional[Tensor] = None,
                        activation: Optional[str] = None) -> Tensor:
    """Pure-PyTorch causal depthwise conv1d (see module docstring): x
    (batch, dim, L), weight (dim, width), bias (dim,) -> (batch, dim, L) in
    ``x.dtype``, computed in float32 (float64) with autocast off."""
    _check(x, weight, bias, activation)
    cdt = compute_dtype(x.dtype, weight.dtype,
                        *(() if bias is None else (bias.dtype,)))
    width = weight.shape[1]
    with autocast_off(x.device.type):
        out = F.conv1d(F.pad(x.to(cdt), (width - 1, 0)),
                       weight.to(cdt).unsqueeze(1),
                       None if bias is None else bias.to(cdt),
                       groups=x.shape[1])
        if activation is not None:
            out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  activation: Optional[str] = None) -> Tensor:
    """Causal depthwise conv1d on the CUDA kernel or in PyTorch."""
    _check(x, weight, bias, activation)
    backend = resolve_backend('causal_conv1d', x)
    if backend == 'cuda':
        fn = kernel('causal_conv1d', backend).load()
        return fn(_cuda_layout(x), weight, bias, activation=activation)
    if backend != 'torch':
        fn = kernel('causal_conv1d', backend).load()
        return fn(x, weight, bias, activation=activation)
    return causal_conv1d_torch(x, weight, bias, activation)


def _cuda_layout(x: Tensor) -> Tensor:
    """``x`` in a layout causal-conv1d's kernel takes: contiguous along L,
    or channel-last (``x.stride(1) == 1``, e.g. a channel slice of a
    transposed Linear output) only with channels and strides divisible by 8
    and 16-byte aligned rows. Any other channel-last tensor is copied
    contiguous: the kernel would reject it (``causal_conv1d only supports
    channel dimension divisible by 8``)."""
    if x.stride(2) == 1:
        return x
    aligned = x.data_ptr() % 16 == 0 and all(
        s % 8 == 0 for s in (x.shape[1], x.stride(0), x.stride(2)))
    return x if x.stride(1) == 1 and aligned else x.contiguous()
