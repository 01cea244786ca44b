"""Normalisation layers shared by the backbones."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .utils import at_least_fp32


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, weight only (no bias).

    ``y = x / sqrt(mean(x ** 2) + eps) * weight``, computed in (at least)
    float32 and
    returned in the input dtype, as mamba-ssm's fused Triton RMSNorm does.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square. Defaults to 1e-5 (Vim).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = at_least_fp32(x)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * at_least_fp32(self.weight)).to(x.dtype)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, eps={self.eps}'


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (each pixel on its own),
    as detectron2's ``LN`` in ViTDet. Registered for ``norm_cfg`` as
    ``dict(type='LN2d')``.

    The output is a contiguous NCHW tensor: mmcv's compiled RoIAlign reads
    its input's memory as contiguous NCHW whatever the strides say, so the
    channels-last view that the normalisation leaves behind gave the
    RoI heads after a ``SimpleFeaturePyramid`` scrambled features.
    """

    _abbr_ = 'ln'

    def __init__(self, num_channels: int, eps: float = 1e-6,
                 **kwargs) -> None:
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(
            0, 3, 1, 2).contiguous()


def _register_ln2d() -> None:
    # mmcv's build_norm_layer resolves norm types through mmengine's root
    # MODELS registry, which mmseg's and mmdet's registries fall back to.
    from mmengine.registry import MODELS
    if MODELS.get('LN2d') is None:
        MODELS.register_module(name='LN2d', module=LayerNorm2d)


_register_ln2d()
