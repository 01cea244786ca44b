"""Vim's bidirectional Mamba mixer ("v2": shared in/out projections).

Shapes for a token sequence ``(B, L, dim)`` with ``d_inner = expand * dim``::

    x, z     = in_proj(tokens).chunk(2)            (B, d_inner, L) each
    forward  : y_f = S6(silu(conv1d(x)),  z)        conv1d, x_proj, dt_proj,
                                                   A_log, D
    backward : y_b = S6(silu(conv1d_b(x')), z')    x' = flip(x), z' = flip(z),
                                                   *_b parameters
    out      = out_proj((y_f + flip(y_b)) / 2)     (B, L, dim)

where ``S6(u, z)`` is the selective scan with ``[dt | B | C] = x_proj(u)``,
``delta = dt_proj.weight @ dt`` (bias added inside the scan, softplus) and
``A = -exp(A_log)``, gated by ``silu(z)``: exactly what mamba-ssm's
``mamba_inner_fn_no_out_proj`` computes for each direction in the official
code. Parameter names equal the official ones (``layers.i.mixer.*``).

By default both directions run as ONE scan over ``2 * d_inner`` channels with
two groups of input-dependent B/C (``fused=True``): the same arithmetic, half
the sequential steps on the torch path and one kernel launch on CUDA.

The mixer scans the sequence in the order it is given and its reversal;
the 2-D order (the scan route) is chosen by the Vim backbone, which puts the
tokens in route order once before the first block.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ...ops import causal_conv1d, selective_scan
from .utils import at_least_fp32, linear_channels_first


def _inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer of Vim (``bimamba_type='v2'``).

    Args:
        dim: token channels (d_model).
        d_state: SSM state size N. Defaults to 16.
        d_conv: causal conv width. Defaults to 4.
        expand: d_inner = expand * dim. Defaults to 2.
        dt_rank: rank of the step-size projection; 'auto' = ceil(dim / 16).
        dt_min, dt_max, dt_init_floor, dt_scale: step-size initialisation
            (as mamba-ssm).
        conv_bias: bias in the causal convs. Defaults to True.
        bias: bias in in_proj/out_proj. Defaults to False.
        divide_out: average the two directions (official ``if_divide_out``,
            True in every release) instead of summing them.
        fused: run both directions in one grouped scan (default) or in two
            scans (same result; kept for checking and benchmarking).
        num_layers: depth of the network, for the out_proj init rescale.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, dt_rank='auto', dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0, conv_bias: bool = True,
                 bias: bool = False, divide_out: bool = True,
                 fused: bool = True, num_layers: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.d_state = d_state
        self.d_inner = d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else dt_rank
        self.divide_out = divide_out
        self.fused = fused
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias)
        for suffix in ('', '_b'):
            self.add_module('conv1d' + suffix, nn.Conv1d(
                d_inner, d_inner, d_conv, groups=d_inner, bias=conv_bias,
                padding=d_conv - 1))
            self.add_module('x_proj' + suffix, nn.Linear(
                d_inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module('dt_proj' + suffix, nn.Linear(
                self.dt_rank, d_inner, bias=True))
        # S4D-real init A = -(1..N) per channel; D = 1 (both kept in fp32)
        A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
        self.A_log = nn.Parameter(A_log.repeat(d_inner, 1))
        self.A_b_log = nn.Parameter(A_log.repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D_b = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)
        self.reset_parameters(dt_min, dt_max, dt_init_floor, dt_scale,
                              num_layers)

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1,
                         dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                         num_layers: int = 1) -> None:
        """The official initialisation (mamba-ssm + Vim's ``_init_weights``).

        Linear/conv weights keep PyTorch's default init except: dt_proj's
        weight ~ U(+-dt_scale / sqrt(dt_rank)) and its bias = softplus^-1 of
        a log-uniform step in [dt_min, dt_max]; out_proj's weight is divided
        by sqrt(num_layers); every other Linear bias is zero. As in the
        official code the backward dt_proj_b keeps the default weight init
        and a zero bias (a start step of softplus(0) = 0.69).
        """
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (
            math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(_inverse_softplus(dt))
        nn.init.zeros_(self.dt_proj_b.bias)
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight /= math.sqrt(num_layers)

    # ------------------------------------------------------------------
    def _direction(self, x: Tensor, z: Tensor, suffix: str) -> Tensor:
        """One direction's S6 branch: x, z (B, d_inner, L) -> y (same)."""
        conv = getattr(self, 'conv1d' + suffix)
        x_proj = getattr(self, 'x_proj' + suffix)
        dt_proj = getattr(self, 'dt_proj' + suffix)
        A = -torch.exp(at_least_fp32(getattr(self, 'A' + suffix + '_log')))
        D = at_least_fp32(getattr(self, 'D' + suffix))
        u = causal_conv1d(x, conv.weight.squeeze(1), conv.bias, 'silu')
        x_dbl = x_proj(u.transpose(1, 2))  # (B, L, r + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], -1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L)
        return selective_scan(u, delta, A, B.transpose(1, 2),
                              C.transpose(1, 2), D, z,
                              delta_bias=at_least_fp32(dt_proj.bias),
                              delta_softplus=True)

    def _both_directions(self, x: Tensor, z: Tensor) -> Tensor:
        """Both branches in one grouped scan; returns y_f + flip(y_b)."""
        di, r, n = self.d_inner, self.dt_rank, self.d_state
        x2 = torch.cat((x, x.flip(-1)), 1)  # (B, 2 d_inner, L)
        z2 = torch.cat((z, z.flip(-1)), 1)
        w = torch.cat((self.conv1d.weight, self.conv1d_b.weight)).squeeze(1)
        b = (None if self.conv1d.bias is None else
             torch.cat((self.conv1d.bias, self.conv1d_b.bias)))
        u = causal_conv1d(x2, w, b, 'silu')
        batch, _, length = u.shape
        u4 = u.view(batch, 2, di, length)
        x_dbl = torch.einsum('bgdl,ged->bgel', u4, torch.stack(
            (self.x_proj.weight, self.x_proj_b.weight)))  # (B, 2, r+2N, L)
        dt, B, C = x_dbl.split([r, n, n], 2)
        delta = torch.einsum('bgrl,gdr->bgdl', dt, torch.stack(
            (self.dt_proj.weight, self.dt_proj_b.weight)))
        A = -torch.exp(at_least_fp32(torch.cat((self.A_log, self.A_b_log))))
        D = at_least_fp32(torch.cat((self.D, self.D_b)))
        bias = at_least_fp32(torch.cat((self.dt_proj.bias,
                                          self.dt_proj_b.bias)))
        y = selective_scan(u, delta.reshape(batch, 2 * di, length), A, B, C,
                           D, z2, delta_bias=bias, delta_softplus=True)
        y_f, y_b = y.split(di, 1)
        return y_f + y_b.flip(-1)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B, L, dim) -> (B, L, dim)."""
        # (B, 2 d_inner, L) straight from a batched matmul (bit for bit
        # in_proj(x).transpose(1, 2)): x and z are contiguous along L, so
        # the flips, concatenations and the conv below read rows instead of
        # transposing a view (Vim-Ti at 512 on CPU: 1.2x forward)
        xz = linear_channels_first(x, self.in_proj)
        xs, z = xz.chunk(2, dim=1)
        if self.fused:
            y = self._both_directions(xs, z)
        else:
            y = (self._direction(xs, z, '')
                 + self._direction(xs.flip(-1), z.flip(-1), '_b').flip(-1))
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, d_inner={self.d_inner}, '
                f'd_state={self.d_state}, dt_rank={self.dt_rank}, '
                f'fused={self.fused}')
