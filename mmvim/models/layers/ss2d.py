"""VMamba's 2-D selective-scan mixer (SS2D, the released ``v05_noz``).

For a channels-last map ``x`` (B, H, W, C) with ``d_inner = ssm_ratio * C``
and K scan routes (4 in the releases)::

    u   = silu(dwconv3x3(in_proj(x)))            (B, d_inner, H, W)
    us  = scan(u)                                (B, K, d_inner, H*W)
    [dt | B | C]_k = x_proj_weight[k] @ us_k     per route (grouped weights)
    delta_k        = dt_projs_weight[k] @ dt_k
    ys  = S6(us, delta, A=-exp(A_logs), B, C, Ds, dt_projs_bias, softplus)
    y   = merge(ys)                              (B, d_inner, H, W)
    out = out_proj(out_norm(y))                  (B, H, W, C)

All K routes go through ONE ``mmvim.ops.selective_scan`` call with B/C
grouped per route (batch, K, N, L), so mamba-ssm's kernel (or our torch
path) serves them together. Parameter names equal the official ones, with
K rows per route (``x_proj_weight`` (K, R+2N, d_inner), ``dt_projs_weight``
(K, d_inner, R), ``dt_projs_bias`` (K, d_inner), ``A_logs`` (K*d_inner, N),
``Ds`` (K*d_inner)): with K = 4 they are the official shapes whatever the
routes.

The routes (``scan_routes``, see :mod:`mmvim.ops.routes`) default to the
released cross scan ('raster', 'column', 'raster_rev', 'column_rev'), which
runs as today's :func:`~mmvim.ops.cross_scan` / :func:`~mmvim.ops.cross_merge`
(flips and transposes, bit for bit). Any other K routes cost one gather
(:meth:`ScanRoutes.scan`) and one adjoint gather-and-sum
(:meth:`ScanRoutes.merge`) per mixer.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...ops import (
    cross_merge,
    cross_scan,
    scan_reverses_in_kernel,
    selective_scan,
)
from ...ops.routes import DEFAULT_CROSS_ROUTES, RouteSpec, ScanRoutes
from .utils import at_least_fp32, linear_channels_first


class SS2D(nn.Module):
    """VMamba's SS2D mixer: (B, H, W, C) -> (B, H, W, C), see the module
    docstring.

    Args:
        dim: model channels C.
        d_state: SSM state size N (1 in the releases).
        ssm_ratio: d_inner / C (1.0 for T, 2.0 for S/B).
        dt_rank: 'auto' = ceil(C / 16).
        d_conv: depthwise conv size (3); < 2 disables the conv.
        conv_bias: bias in the depthwise conv (False in the releases).
        dt_min, dt_max, dt_init_floor, dt_scale: step-size init (mamba-ssm).
        scan_routes: K >= 1 routes (names or ``dict(type=name, **kwargs)``,
            :mod:`mmvim.ops.routes`); the per-route parameters follow K.
            Defaults to the released four-way cross scan.
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0,
                 dt_rank='auto', d_conv: int = 3, conv_bias: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 scan_routes: Sequence[RouteSpec] = DEFAULT_CROSS_ROUTES
                 ) -> None:
        super().__init__()
        self.routes = ScanRoutes(scan_routes)
        # the released routes keep the flip/transpose fast path
        self.cross = self.routes == DEFAULT_CROSS_ROUTES
        self.k = k = len(self.routes)
        self.dim = dim
        self.d_state = n = d_state
        self.d_inner = di = int(ssm_ratio * dim)
        self.dt_rank = r = math.ceil(dim / 16) if dt_rank == 'auto' \
            else int(dt_rank)
        self.in_proj = nn.Linear(dim, di, bias=False)
        self.conv2d = nn.Conv2d(di, di, d_conv, padding=(d_conv - 1) // 2,
                                groups=di, bias=conv_bias) \
            if d_conv > 1 else None
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, di))
        self.A_logs = nn.Parameter(torch.log(torch.arange(
            1, n + 1, dtype=torch.float32)).repeat(k * di, 1))
        self.Ds = nn.Parameter(torch.ones(k * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, dim, bias=False)
        self.reset_parameters(dt_min, dt_max, dt_init_floor, dt_scale)

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1,
                         dt_init_floor: float = 1e-4,
                         dt_scale: float = 1.0) -> None:
        """Official init (``initialize='v0'``): x_proj as K default Linear
        layers, per-route mamba dt init, A = -(1..N), D = 1. (in_proj /
        out_proj / norms are set by the backbone's Linear/LayerNorm init.)"""
        for k in range(self.k):
            nn.init.kaiming_uniform_(self.x_proj_weight[k], a=math.sqrt(5))
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_projs_weight, -std, std)
        dt = torch.exp(torch.rand(self.k, self.d_inner) * (
            math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        # (B, d_inner, H*W) straight from a batched matmul (bit for bit
        # in_proj(x).permute(0, 3, 1, 2), without transposing that view)
        u = linear_channels_first(x.flatten(1, 2), self.in_proj).view(
            b, -1, h, w)
        if self.conv2d is not None:
            u = self.conv2d(u)
        u = F.silu(u)
        y = self.core(u)  # (B, d_inner, H, W)
        y = self.out_norm(y.permute(0, 2, 3, 1)).to(x.dtype)
        return self.out_proj(y)

    def core(self, u: Tensor) -> Tensor:
        """K-route selective scan: (B, d_inner, H, W) -> same shape."""
        b, di, h, w = u.shape
        k, n, r, length = self.k, self.d_state, self.dt_rank, h * w
        # where the kernel runs routes backwards itself, the reversed routes
        # 2 and 3 are never flipped (their sequences equal routes 0 and 1)
        flip = not (self.cross and scan_reverses_in_kernel(u))
        us = cross_scan(u, flip) if self.cross else self.routes.scan(u)
        x_dbl = torch.einsum('bkdl,kcd->bkcl', us, self.x_proj_weight)
        dts, Bs, Cs = x_dbl.split([r, n, n], 2)
        dts = torch.einsum('bkrl,kdr->bkdl', dts, self.dt_projs_weight)
        ys = selective_scan(
            us.reshape(b, k * di, length),
            dts.reshape(b, k * di, length),
            -torch.exp(at_least_fp32(self.A_logs)), Bs, Cs,
            at_least_fp32(self.Ds),
            delta_bias=at_least_fp32(self.dt_projs_bias.reshape(-1)),
            delta_softplus=True,
            reverse=None if flip else (False, False, True, True))
        if self.cross:
            return cross_merge(ys.view(b, k, di, h, w), flip).view(
                b, di, h, w)
        return self.routes.merge(ys.view(b, k, di, length), h, w).view(
            b, di, h, w)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, d_inner={self.d_inner}, '
                f'd_state={self.d_state}, dt_rank={self.dt_rank}, '
                f'scan_routes=({", ".join(self.routes.names)})')
