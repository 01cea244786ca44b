"""VMamba's four-route cross-scan and its adjoint, cross-merge.

``cross_scan`` turns a map (B, C, H, W) into four sequences (B, 4, C, H*W):

======  =============================================
route   order of the H*W positions
======  =============================================
0       row-major (h, w): left to right, top to bottom
1       column-major (w, h): top to bottom, left to right
2       route 0 reversed
3       route 1 reversed
======  =============================================

``cross_merge`` takes per-route outputs (B, 4, C, H, W) laid out in each
route's own order (position t of route k in ``[..., t]`` after flattening the
last two dims) and sums them back at their (h, w): it is the transpose
(adjoint) of ``cross_scan``, so each is the other's gradient. Both are plain
tensor re-indexing here (autograd gives the backward); they work for any H
and W, square or not.

These four routes are ``mmvim.ops.routes.DEFAULT_CROSS_ROUTES``
('raster', 'column', 'raster_rev', 'column_rev'), the released VMamba scan:
SS2D keeps this flip/transpose path for them, so the default stays bit for
bit what it was. Any other routes go through the general one-gather
:class:`mmvim.ops.routes.ScanRoutes` (its ``scan`` gives the same sequences
as ``cross_scan`` for these four routes; its ``merge`` sums the routes in
another order, so it may differ from ``cross_merge`` by float round-off).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['cross_scan', 'cross_merge']


def cross_scan(x: Tensor, flip: bool = True) -> Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W) in the route orders of the module.

    ``flip=False`` leaves routes 2 and 3 in the order of routes 0 and 1, for
    a scan that runs them backwards itself (``selective_scan(...,
    reverse=(False, False, True, True))``); :func:`cross_merge` then takes
    the same flag."""
    if x.dim() != 4:
        raise ValueError(f'cross_scan expects (B, C, H, W), got '
                         f'{tuple(x.shape)}')
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    if not flip:
        return torch.stack((rows, cols, rows, cols), 1)
    fwd = torch.stack((rows, cols), 1)  # (B, 2, C, L)
    return torch.cat((fwd, fwd.flip(-1)), 1)


def cross_merge(ys: Tensor, flip: bool = True) -> Tensor:
    """(B, 4, C, H, W) route outputs -> (B, C, H*W) summed at each (h, w);
    ``flip=False``: routes 2 and 3 are in the order of routes 0 and 1 (see
    :func:`cross_scan`)."""
    if ys.dim() != 5 or ys.shape[1] != 4:
        raise ValueError(f'cross_merge expects (B, 4, C, H, W), got '
                         f'{tuple(ys.shape)}')
    b, _, c, h, w = ys.shape
    seq = ys.flatten(3)  # (B, 4, C, L) in route order
    # undo the reversals
    fwd = seq[:, :2] + (seq[:, 2:].flip(-1) if flip else seq[:, 2:])
    cols = fwd[:, 1].reshape(b, c, w, h).transpose(2, 3).flatten(2)
    return fwd[:, 0] + cols
