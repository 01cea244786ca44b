"""2-D rotary position embedding (EVA-02 style), as Vim's optional RoPE.

Half of the channels rotate with the row index, half with the column index.
Channel pairs (2k, 2k+1) form one rotation; frequencies are
``theta ** (-2j / (dim / 2))`` for ``j < dim / 4``, each used by two
consecutive pairs of its half. Positions are rescaled so that the grid spans
``pt_seq_len`` positions whatever its size, which reproduces the official
``VisionRotaryEmbeddingFast(dim / 2, pt_seq_len, ft_seq_len=grid)`` at the
training grid and extends it to any (also non-square) grid at run time.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor


def rotate_half(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last dim."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)


class RotaryEmbedding2d(nn.Module):
    """Rotary embedding over a (H, W) token grid, tokens (B, H*W, dim).

    Args:
        dim: token channels (divisible by 4).
        pt_seq_len: grid side the positions are scaled to (14 for 224/16).
        theta: frequency base. Defaults to 10000.
    """

    def __init__(self, dim: int, pt_seq_len: int = 14,
                 theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f'RotaryEmbedding2d: dim={dim} must be divisible '
                             'by 4 (two axes, pairs of channels)')
        self.dim = dim
        self.pt_seq_len = pt_seq_len
        half = dim // 2
        freqs = theta ** (-torch.arange(0, half, 2)[:half // 2].float() / half)
        self.register_buffer('freqs', freqs, persistent=False)

    def cos_sin(self, grid: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """(H*W, dim) cosines and sines for a grid of ``grid`` tokens."""
        axes = []
        for size in grid:
            pos = torch.arange(size, device=self.freqs.device,
                               dtype=torch.float32) / size * self.pt_seq_len
            ang = pos[:, None] * self.freqs[None]  # (size, dim/4)
            axes.append(ang.repeat_interleave(2, dim=-1))  # (size, dim/2)
        h, w = grid
        ang = torch.cat((axes[0][:, None].expand(h, w, -1),
                         axes[1][None].expand(h, w, -1)), -1)
        ang = ang.reshape(h * w, self.dim)
        return ang.cos(), ang.sin()

    def forward(self, x: Tensor, grid: Tuple[int, int],
                order: Optional[Tensor] = None) -> Tensor:
        """Rotate tokens ``x`` (B, H*W, dim) of ``grid``: laid out
        row-major, or in the scan order ``order`` (H*W,) (token t sits at
        the row-major position ``order[t]``)."""
        cos, sin = self.cos_sin(grid)
        if order is not None:
            cos, sin = cos[order], sin[order]
        return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)
