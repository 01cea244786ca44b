"""VMamba (Liu et al. 2024) as an mmseg/mmdet backbone, the released v2 models.

Hierarchical, four stages at strides 4/8/16/32 with channels C * 2**i::

    patch_embed : conv3x3/2 (3 -> C/2) - LN - GELU - conv3x3/2 (-> C) - LN
    stage i     : depths[i] x VSSBlock, then (i < 3) conv3x3/2 (-> 2C) - LN
    VSSBlock    : x = x + drop_path(SS2D(LN(x)))
                  x = x + drop_path(MLP(LN(x)))           (MLP ratio 4)
    output i    : outnorm_i(stage i before its downsample), NCHW

computed channels-last (B, H, W, C) with plain Linear/LayerNorm, which is the
same arithmetic as the official channels-first ``ln2d`` layout (1x1 convs and
channel LayerNorm); parameter names and shapes equal the official ones
(``patch_embed.{0,2,5,7}``, ``layers.i.blocks.j.{norm,op,norm2,mlp}``,
``layers.i.downsample.{1,3}``, ``outnorm{i}``). Any input size works (the
strided convs round up).

``scan_routes`` (every SS2D of the network) chooses the K routes that turn
each map into sequences (:mod:`mmvim.ops.routes`); the default is the
released cross scan, computed exactly as before. The per-route SS2D
parameters follow K; with K = 4 the official checkpoints load whatever the
routes (fine-tuning a released model with another order), with K != 4 they
cannot (a clear error says so).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from torch import Tensor

from ...checkpoint.vmamba import (
    check_route_count,
    convert_vmamba,
    load_vmamba_pretrained,
)
from ...ops.routes import DEFAULT_CROSS_ROUTES, RouteSpec, ScanRoutes
from ...registry import register_model
from ..layers import SS2D, Mlp
from .base import MambaBackbone

# The released models (classification/configs/vssm/vmambav2*_224.yaml):
# d_state 1, dt_rank auto, conv 3 without bias, v05_noz, MLP ratio 4,
# patch-embed v2, downsample v3.
ARCH_SETTINGS = {
    'tiny': dict(dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0,
                 drop_path_rate=0.2),
    'small': dict(dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0,
                  drop_path_rate=0.3),
    'base': dict(dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0,
                 drop_path_rate=0.6),
}


class Permute(nn.Module):
    """Tensor.permute as a module (keeps the official Sequential indices)."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


class VSSBlock(nn.Module):
    """Pre-norm SS2D and MLP residual branches on (B, H, W, C)."""

    def __init__(self, dim: int, drop_path: float, mlp_ratio: float,
                 ssm_kwargs: dict, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.op = SS2D(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VSSStage(nn.Module):
    """``blocks`` then ``downsample`` (Identity for the last stage)."""

    def __init__(self, blocks: Sequence[nn.Module],
                 downsample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample


@register_model()
class VMamba(MambaBackbone):
    """VMamba backbone for dense prediction (the official ``Backbone_VSSM``).

    Args:
        arch: 'tiny' | 'small' | 'base' (``ARCH_SETTINGS``); ``dims``,
            ``depths``, ``ssm_ratio`` and ``drop_path_rate`` override it.
        dims: stage-0 channels (int, doubled per stage) or four values.
        depths: blocks per stage.
        ssm_d_state, ssm_ratio, ssm_dt_rank, ssm_conv, ssm_conv_bias: SS2D
            settings (released: 1, 1.0/2.0, 'auto', 3, False).
        scan_routes: the K >= 1 scan routes of every SS2D (names or
            ``dict(type=name, **kwargs)``, see :mod:`mmvim.ops.routes`).
            Defaults to the released cross scan ('raster', 'column',
            'raster_rev', 'column_rev'). K = 4 keeps the official parameter
            shapes, e.g. ('snake', 'snake_column', 'snake_rev',
            'snake_column_rev').
        mlp_ratio: MLP hidden ratio (4; 0 disables the MLP branch).
        drop_path_rate: stochastic depth, linear over all blocks.
        in_channels: image channels.
        out_indices: stages whose (normed) outputs are returned.
        norm_eps: LayerNorm epsilon (1e-5 as torch's default).
        with_cp: gradient checkpointing per block.
        frozen_stages: freeze the patch embedding (0) and stages
            0..frozen_stages-1 (their blocks and downsample); -1: none.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` loads an
            official classification release (converted on load, see
            :mod:`mmvim.checkpoint.vmamba`).
    """

    arch_settings = ARCH_SETTINGS
    family = 'VMamba'
    pretrained_loader = load_vmamba_pretrained

    def __init__(self,
                 arch: str = 'tiny',
                 dims: Union[int, Sequence[int], None] = None,
                 depths: Optional[Sequence[int]] = None,
                 ssm_d_state: int = 1,
                 ssm_ratio: Optional[float] = None,
                 ssm_dt_rank: Union[int, str] = 'auto',
                 ssm_conv: int = 3,
                 ssm_conv_bias: bool = False,
                 scan_routes: Sequence[RouteSpec] = DEFAULT_CROSS_ROUTES,
                 mlp_ratio: float = 4.0,
                 drop_path_rate: Optional[float] = None,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 norm_eps: float = 1e-5,
                 with_cp: bool = False,
                 frozen_stages: int = -1,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if arch not in self.arch_settings:
            raise ValueError(f'VMamba: unknown arch {arch!r}; choose one of '
                             f'{sorted(self.arch_settings)} and override '
                             'dims / depths / ssm_ratio for other sizes')
        preset = self.arch_settings[arch]
        self.arch = arch
        dims = preset['dims'] if dims is None else dims
        depths = tuple(preset['depths'] if depths is None else depths)
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(len(depths))]
        self.dims = tuple(int(d) for d in dims)
        self.depths = depths
        if len(self.dims) != len(depths):
            raise ValueError(f'VMamba: {len(self.dims)} dims for '
                             f'{len(depths)} stages')
        self.out_indices = tuple(out_indices)
        for i in self.out_indices:
            if not 0 <= i < len(depths):
                raise ValueError(f'VMamba: out_indices {self.out_indices} '
                                 f'out of range for {len(depths)} stages')
        self.in_channels = in_channels
        self.with_cp = with_cp
        self.frozen_stages = frozen_stages
        ssm_ratio = preset['ssm_ratio'] if ssm_ratio is None else ssm_ratio
        rate = preset['drop_path_rate'] if drop_path_rate is None \
            else drop_path_rate
        self.scan_routes = ScanRoutes(scan_routes)  # checks the names
        ssm_kwargs = dict(d_state=ssm_d_state, ssm_ratio=ssm_ratio,
                          dt_rank=ssm_dt_rank, d_conv=ssm_conv,
                          conv_bias=ssm_conv_bias,
                          scan_routes=scan_routes)

        c0 = self.dims[0]
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_channels, c0 // 2, 3, 2, 1),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(c0 // 2, eps=norm_eps),
            Permute(0, 3, 1, 2),
            nn.GELU(),
            nn.Conv2d(c0 // 2, c0, 3, 2, 1),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(c0, eps=norm_eps))
        dpr = torch.linspace(0, rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            blocks = [VSSBlock(self.dims[i], dpr[start + j], mlp_ratio,
                               ssm_kwargs, norm_eps) for j in range(depth)]
            if i < len(depths) - 1:
                downsample = nn.Sequential(
                    Permute(0, 3, 1, 2),
                    nn.Conv2d(self.dims[i], self.dims[i + 1], 3, 2, 1),
                    Permute(0, 2, 3, 1),
                    nn.LayerNorm(self.dims[i + 1], eps=norm_eps))
            else:
                downsample = nn.Identity()
            self.layers.append(VSSStage(blocks, downsample))
        for i in self.out_indices:
            self.add_module(f'outnorm{i}',
                            nn.LayerNorm(self.dims[i], eps=norm_eps))
        self.apply(self._official_init)
        self.freeze()

    @staticmethod
    @torch.no_grad()
    def _official_init(m: nn.Module) -> None:
        """trunc_normal(0.02) Linear weights, zero biases, unit LayerNorms
        (the official ``VSSM._init_weights``); SS2D's own parameters and the
        convs keep their initialisation."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict, source=''):
        """Legacy renames; the ImageNet classifier is dropped. A file with
        another number of scan routes than this model is a clear error."""
        check_route_count(state_dict, self, source)
        return convert_vmamba(state_dict, source)

    def frozen_modules(self) -> List[nn.Module]:
        """Patch embedding for ``frozen_stages >= 0``, then stages
        0..frozen_stages-1 (blocks and downsample)."""
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed] + list(self.layers[:self.frozen_stages])

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images (B, C, H, W) -> tuple of (B, dims[i], H/2^(i+2), W/...)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'VMamba expects images (B, {self.in_channels}, H, W), got '
                f'{tuple(x.shape)}; set in_channels for other inputs')
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        outs = []
        for i, stage in enumerate(self.layers):
            for block in stage.blocks:
                if self.with_cp and self.training and x.requires_grad:
                    x = cp.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i in self.out_indices:
                out = getattr(self, f'outnorm{i}')(x)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
            x = stage.downsample(x)
        return tuple(outs)
