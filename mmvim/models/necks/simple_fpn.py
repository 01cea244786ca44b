"""ViTDet's simple feature pyramid for plain backbones (Li et al. 2022).

One stride-16 map (B, C, H, W) becomes five maps of ``out_channels``::

    scale 4   : deconv 2x2 (C -> C/2) - norm - GELU - deconv 2x2 (-> C/4)
    scale 2   : deconv 2x2 (C -> C/2)
    scale 1   : identity
    scale 0.5 : max-pool 2x2
    each      : conv 1x1 (-> out) - norm - conv 3x3 - norm
    p6        : max-pool (kernel 1, stride 2) of the last level

as detectron2's ``SimpleFeaturePyramid`` with ``LastLevelMaxPool`` and
``norm='LN'`` (channels-first LayerNorm, ``LN2d`` here). mmdet's core has no
such neck; strides 4..64 feed its RPN/RoI heads like an FPN's outputs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor

from ...registry import register_model


@register_model()
class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid: the backbone map ``input_index``
    (B, C, H, W) -> one map (B, out_channels, H * s, W * s) per scale s in
    ``scale_factors``, plus the max-pooled p6 when ``num_outs`` asks for
    it; see the module docstring.

    Args:
        in_channels: channels of the backbone map.
        out_channels: channels of every output. Defaults to 256.
        scale_factors: pyramid scales relative to the input map.
        num_outs: outputs; one more than ``len(scale_factors)`` adds the
            max-pooled top level (p6). Defaults to 5.
        norm_cfg: norm after each conv. Defaults to detectron2's LN
            (``dict(type='LN2d', eps=1e-6)``).
        input_index: which backbone output to use (default: the last).
    """

    def __init__(self, in_channels: int, out_channels: int = 256,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 num_outs: int = 5,
                 norm_cfg: Optional[dict] = None,
                 input_index: int = -1, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        norm_cfg = norm_cfg or dict(type='LN2d', eps=1e-6)
        if num_outs not in (len(scale_factors), len(scale_factors) + 1):
            raise ValueError(f'SimpleFeaturePyramid: num_outs={num_outs} must '
                             f'be {len(scale_factors)} or '
                             f'{len(scale_factors) + 1} (with p6)')
        self.input_index = input_index
        self.num_outs = num_outs
        self.stages = nn.ModuleList()
        for scale in scale_factors:
            dim = in_channels
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, 2),
                          build_norm_layer(norm_cfg, dim // 2)[1],
                          nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)]
                dim //= 4
            elif scale == 2.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, 2)]
                dim //= 2
            elif scale == 1.0:
                layers = []
            elif scale == 0.5:
                layers = [nn.MaxPool2d(2, 2)]
            else:
                raise ValueError(f'SimpleFeaturePyramid: scale {scale} is not '
                                 'one of 4, 2, 1, 0.5')
            layers += [
                ConvModule(dim, out_channels, 1, norm_cfg=norm_cfg,
                           act_cfg=None),
                ConvModule(out_channels, out_channels, 3, padding=1,
                           norm_cfg=norm_cfg, act_cfg=None)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        x = inputs[self.input_index]
        outs = [stage(x) for stage in self.stages]
        if self.num_outs > len(outs):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
