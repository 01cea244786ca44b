"""MambaVision's token mixers: the (non-causal) Mamba mixer and attention.

``MambaVisionMixer`` on tokens (B, L, C), with d_inner = C (expand 1)::

    x, z = in_proj(tokens).chunk(2)                 (B, C/2, L) each
    x = silu(dwconv1d_k3_same(x)); z = silu(dwconv1d_k3_same(z))
    [dt | B | C] = x_proj(x);  delta = dt_proj(dt)  (WITH its bias)
    y = S6(x, delta, A=-exp(A_log), B, C, D, delta_bias=dt_proj.bias,
           softplus)                                (bias applied twice, as
                                                     the official code does)
    out = out_proj(cat(y, z))                       (z concatenated, no gate)

The convs are symmetric ('same' padding), so this is not the causal conv of
Vim; they have no bias. Parameter names equal the official ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...ops import selective_scan
from .utils import at_least_fp32


class MambaVisionMixer(nn.Module):
    """Args:
        dim: token channels C (even).
        d_state: SSM state size (8 in the releases).
        d_conv: depthwise conv size (3).
        dt_rank: 'auto' = ceil(C / 16).
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3,
                 dt_rank='auto') -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f'MambaVisionMixer: dim={dim} must be even')
        self.dim = dim
        self.d_state = d_state
        self.dt_rank = r = math.ceil(dim / 16) if dt_rank == 'auto' \
            else int(dt_rank)
        half = dim // 2
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(half, r + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(r, half, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(
            1, d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D = nn.Parameter(torch.ones(half))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half,
                                  bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half,
                                  bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L, C) -> (B, L, C)."""
        half = self.dim // 2
        x, z = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(F.conv1d(x, self.conv1d_x.weight, padding='same',
                            groups=half))
        z = F.silu(F.conv1d(z, self.conv1d_z.weight, padding='same',
                            groups=half))
        dt, B, C = self.x_proj(x.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(dt).transpose(1, 2)  # bias included here ...
        y = selective_scan(
            x, delta, -torch.exp(at_least_fp32(self.A_log)),
            B.transpose(1, 2), C.transpose(1, 2), at_least_fp32(self.D),
            delta_bias=at_least_fp32(self.dt_proj.bias),  # ... and here
            delta_softplus=True)
        return self.out_proj(torch.cat((y, z), dim=1).transpose(1, 2))


class Attention(nn.Module):
    """Multi-head self-attention over (B, L, C) tokens with ``qkv`` and
    ``proj`` Linear layers (timm naming), scaled dot product with the
    default 1/sqrt(head_dim) scale, no mask, no position bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'Attention: dim={dim} is not divisible by '
                             f'num_heads={num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads,
                                      self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))
