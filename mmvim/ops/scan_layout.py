"""Layout helpers of the selective scan's contract, shared by the eager
entry point (:mod:`mmvim.ops.selective_scan`) and the export path
(:mod:`mmvim.ops.scan_export`).

They sit one level below both modules so that neither imports the other
for them: ``reverse`` flags (blocks of channels that run backwards in time)
and the grouping of time-varying B/C.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ['check_reverse', 'flip_blocks', 'flip_bc', 'regroup']


def check_reverse(reverse: Optional[Sequence[bool]],
                  dim: int) -> Optional[Tuple[bool, ...]]:
    """``reverse`` as a tuple of bools; None when no block is reversed."""
    if reverse is None:
        return None
    flags = tuple(bool(f) for f in reverse)
    if not flags or dim % len(flags):
        raise ValueError(f'selective_scan: reverse needs R flags with R '
                         f'dividing dim={dim}, got {len(flags)}')
    return flags if any(flags) else None


def regroup(mat: Tensor, groups: int) -> Tensor:
    """Repeat a grouped (b, G', N, L) B/C so it has ``groups`` groups."""
    if mat.dim() == 4 and mat.shape[1] != groups:
        return mat.repeat_interleave(groups // mat.shape[1], dim=1)
    return mat


def flip_blocks(x: Optional[Tensor], reverse: Tuple[bool, ...]
                ) -> Optional[Tensor]:
    """Flip along time (the last axis) the blocks of axis 1 flagged in
    ``reverse``: channel blocks of a (batch, dim, L) tensor, group blocks of
    a grouped (batch, G, N, L) B/C (None passes through)."""
    if x is None:
        return None
    blocks = x.unflatten(1, (len(reverse), -1)).unbind(1)
    return torch.stack([b.flip(-1) if f else b
                        for b, f in zip(blocks, reverse)], 1).flatten(1, 2)


def flip_bc(mat: Tensor, reverse: Tuple[bool, ...]) -> Tensor:
    """B/C for the reversed blocks: constant (dim, N) as is; time-varying
    ones regrouped so that every group lies in one block, then flipped."""
    if mat.dim() == 2:
        return mat
    mat = mat.unsqueeze(1) if mat.dim() == 3 else mat
    return flip_blocks(regroup(mat, math.lcm(mat.shape[1], len(reverse))),
                       reverse)
