"""MambaVision (Hatamizadeh & Kautz, CVPR 2025) as an mmseg/mmdet backbone.

Hybrid and hierarchical, four stages at strides 4/8/16/32 with channels
C * 2**i::

    patch_embed  : conv3x3/2 - BN - ReLU - conv3x3/2 - BN - ReLU   (no bias)
    stages 0, 1  : ConvBlocks  x + BN(conv(GELU_tanh(BN(conv(x)))))
    stages 2, 3  : windows of ws x ws tokens (zero-padded to a multiple of
                   ws, cropped back after); the first half of the blocks mix
                   with MambaVisionMixer, the second half with attention
                   (an odd depth gives Mamba the extra block), each block
                   x + gamma1 * mixer(LN(x)), x + gamma2 * MLP(LN(x))
    downsample   : conv3x3/2 (C -> 2C, no bias, no norm) after stages 0-2
    output i     : outnorm_i (channel-first LayerNorm) of stage i BEFORE its
                   downsample, NCHW

Parameter names equal the official ones (``patch_embed.conv_down.*``,
``levels.i.blocks.j.*``, ``levels.i.downsample.reduction.0``,
``outnorm{i}``).

Scan route. ``scan_route`` (:mod:`mmvim.ops.routes`) is the order of the
ws x ws tokens of each window that the Mamba mixers scan. The default
'raster' is the released row-major window layout and runs exactly as
before. Another route gathers the window tokens into route order once per
stage, after the window partition, and scatters them back before the window
reverse: the attention blocks (no position bias, no mask), the MLPs and the
norms of the stage treat every token alike, so only the mixers see the
difference (the attention blocks give the same values, up to float
round-off). No parameter depends on the route.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from torch import Tensor

from ...checkpoint.mambavision import (
    convert_mambavision,
    load_mambavision_pretrained,
)
from ...ops.routes import RouteSpec, ScanRoutes
from ...registry import register_model
from ..layers import Attention, LayerNorm2d, MambaVisionMixer, Mlp
from .base import MambaBackbone

# The releases (mambavision/models/mamba_vision.py, mamba_vision_*): MLP
# ratio 4, d_state 8, conv 3, qkv bias; windows as the classifiers at 224.
ARCH_SETTINGS = {
    'T': dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16),
              window_size=(8, 8, 14, 7), drop_path_rate=0.2,
              layer_scale=None),
    'T2': dict(dim=80, in_dim=32, depths=(1, 3, 11, 4),
               num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
               drop_path_rate=0.2, layer_scale=None),
    'S': dict(dim=96, in_dim=64, depths=(3, 3, 7, 5), num_heads=(2, 4, 8, 16),
              window_size=(8, 8, 14, 7), drop_path_rate=0.2,
              layer_scale=None),
    'B': dict(dim=128, in_dim=64, depths=(3, 3, 10, 5),
              num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
              drop_path_rate=0.3, layer_scale=1e-5),
    'L': dict(dim=196, in_dim=64, depths=(3, 3, 10, 5),
              num_heads=(4, 8, 16, 32), window_size=(8, 8, 14, 7),
              drop_path_rate=0.3, layer_scale=1e-5),
    'L2': dict(dim=196, in_dim=64, depths=(3, 3, 12, 5),
               num_heads=(4, 8, 16, 32), window_size=(8, 8, 14, 7),
               drop_path_rate=0.3, layer_scale=1e-5),
}


def attention_blocks(depth: int) -> range:
    """Indices of the attention blocks of a stage: its second half (Mamba
    gets the middle block when the depth is odd), as the official code."""
    return range(depth // 2 + 1, depth) if depth % 2 else \
        range(depth // 2, depth)


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, C, H, W), H and W multiples of ws -> (B * nW, ws * ws, C)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // ws, ws, w // ws, ws)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition` -> (B, C, H, W)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, h, w)


class ConvBlock(nn.Module):
    """Residual conv block of stages 0-1 (NCHW)."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate='tanh')
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return x + self.drop_path(y)


class HybridBlock(nn.Module):
    """Pre-norm mixer (Mamba or attention) and MLP on (B, L, C) tokens,
    with layer scale ``gamma_1/2`` when ``layer_scale`` is given."""

    def __init__(self, dim: int, use_attention: bool, num_heads: int,
                 drop_path: float, layer_scale: Optional[float],
                 mlp_ratio: float = 4.0, d_state: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = Attention(dim, num_heads) if use_attention else \
            MambaVisionMixer(dim, d_state=d_state)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.mixer(self.norm1(x))
        x = x + self.drop_path(y if self.gamma_1 is None else
                               self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma_2 is None else
                                  self.gamma_2 * y)


class MambaVisionLevel(nn.Module):
    """A stage: ``blocks`` (conv or windowed hybrid) and ``downsample``."""

    def __init__(self, blocks: List[nn.Module], window_size: Optional[int],
                 downsample: Optional[nn.Module],
                 scan_route: Optional[ScanRoutes] = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.window_size = window_size  # None: conv stage
        self.downsample = downsample
        # None: the windows' own row-major order ('raster')
        self.scan_route = None if scan_route is None or \
            scan_route == 'raster' else scan_route

    def run_blocks(self, x: Tensor, with_cp: bool = False) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) through the blocks."""
        h, w = x.shape[-2:]
        ws = self.window_size
        route = self.scan_route if ws is not None else None
        if ws is not None:
            # whole windows; written as a multiple of ws so that an
            # exporter tracing dynamic H, W sees that it divides
            hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
            x = F.pad(x, (0, wp - w, 0, hp - h))
            x = window_partition(x, ws)
        if route is not None:  # window tokens in scan order
            order, inverse = route.orders(ws, ws, x.device)
            x = x.index_select(1, order[0])
        for blk in self.blocks:
            if with_cp and x.requires_grad:
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if route is not None:
            x = x.index_select(1, inverse[0])
        if ws is not None:
            x = window_reverse(x, ws, hp, wp)[:, :, :h, :w].contiguous()
        return x


@register_model()
class MambaVision(MambaBackbone):
    """MambaVision backbone for dense prediction (the official
    ``MM_mamba_vision`` dense wrapper, with ``drop_path_rate`` applied).

    Args:
        arch: 'T' | 'T2' | 'S' | 'B' | 'L' | 'L2' (``ARCH_SETTINGS``); each
            preset value can be overridden by the arguments below.
        dim, in_dim, depths, num_heads: stage-0 channels, stem width, blocks
            and heads per stage.
        window_size: per stage (the entries for stages 0-1 are unused).
            The official dense configs use (8, 8, 64, 32) for segmentation
            (T/B; S: (8, 8, 160, 56)) and (8, 8, 112, 56) for detection,
            which make stages 2-3 one global padded window.
        drop_path_rate: stochastic depth, linear over all blocks. (The
            official dense wrapper never passes it on: its runs used 0.2.)
        layer_scale: layer-scale init of the hybrid blocks (None: off).
        scan_route: order of the tokens inside each window for the Mamba
            mixers (a name or ``dict(type=name, **kwargs)``,
            :mod:`mmvim.ops.routes`). Defaults to 'raster' (released).
        mlp_ratio, d_state: 4 and 8 in the releases.
        in_channels: image channels.
        out_indices: stages whose (normed) outputs are returned.
        with_cp: gradient checkpointing of the hybrid blocks.
        frozen_stages: freeze the stem (0) and stages 0..frozen_stages-1.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` loads an
            official release (converted on load, see
            :mod:`mmvim.checkpoint.mambavision`).
    """

    arch_settings = ARCH_SETTINGS
    family = 'MambaVision'
    pretrained_loader = load_mambavision_pretrained

    def __init__(self,
                 arch: str = 'T',
                 dim: Optional[int] = None,
                 in_dim: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 window_size: Optional[Sequence[int]] = None,
                 drop_path_rate: Optional[float] = None,
                 layer_scale: Optional[float] = 'preset',
                 scan_route: RouteSpec = 'raster',
                 mlp_ratio: float = 4.0,
                 d_state: int = 8,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 with_cp: bool = False,
                 frozen_stages: int = -1,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if arch not in self.arch_settings:
            raise ValueError(f'MambaVision: unknown arch {arch!r}; choose one '
                             f'of {sorted(self.arch_settings)} and override '
                             'dim / depths / ... for other sizes')
        p = self.arch_settings[arch]
        self.arch = arch
        dim = dim or p['dim']
        in_dim = in_dim or p['in_dim']
        self.depths = depths = tuple(depths or p['depths'])
        num_heads = tuple(num_heads or p['num_heads'])
        self.window_size = tuple(window_size or p['window_size'])
        rate = p['drop_path_rate'] if drop_path_rate is None \
            else drop_path_rate
        layer_scale = p['layer_scale'] if layer_scale == 'preset' \
            else layer_scale
        if len(depths) != 4 or len(num_heads) != 4 or \
                len(self.window_size) != 4:
            raise ValueError('MambaVision: depths, num_heads and window_size '
                             'need one value per stage (4)')
        self.dims = tuple(dim * 2 ** i for i in range(4))
        self.out_indices = tuple(out_indices)
        for i in self.out_indices:
            if not 0 <= i < 4:
                raise ValueError(f'MambaVision: out_indices '
                                 f'{self.out_indices} out of range (0-3)')
        self.in_channels = in_channels
        self.with_cp = with_cp
        self.frozen_stages = frozen_stages
        self.scan_route = ScanRoutes(scan_route)
        if len(self.scan_route) != 1:
            raise ValueError(f'MambaVision: scan_route is ONE route (the '
                             f'order inside each window), got {scan_route!r}')

        self.patch_embed = nn.Module()
        self.patch_embed.conv_down = nn.Sequential(
            nn.Conv2d(in_channels, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU())
        dpr = torch.linspace(0, rate, sum(depths)).tolist()
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            c, rates = self.dims[i], dpr[sum(depths[:i]):sum(depths[:i + 1])]
            if i < 2:
                blocks = [ConvBlock(c, rates[j]) for j in range(depth)]
                ws = None
            else:
                attn = attention_blocks(depth)
                blocks = [HybridBlock(c, j in attn, num_heads[i], rates[j],
                                      layer_scale, mlp_ratio, d_state)
                          for j in range(depth)]
                ws = self.window_size[i]
            downsample = None
            if i < 3:
                downsample = nn.Module()
                downsample.reduction = nn.Sequential(
                    nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False))
            self.levels.append(MambaVisionLevel(blocks, ws, downsample,
                                                self.scan_route))
        for i in self.out_indices:
            self.add_module(f'outnorm{i}', LayerNorm2d(self.dims[i],
                                                       eps=1e-5))
        self.apply(self._official_init)
        self.freeze()

    @staticmethod
    @torch.no_grad()
    def _official_init(m: nn.Module) -> None:
        """The official ``_init_weights``: every Linear trunc_normal(0.02)
        with zero bias (dt_proj's bias included), norms to 1/0."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict, source=''):
        """Wrapper prefixes stripped; the ImageNet norm/head dropped."""
        return convert_mambavision(state_dict, source)

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed] + list(self.levels[:self.frozen_stages])

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images (B, C, H, W) -> tuple of (B, dims[i], H/2^(i+2), ...)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'MambaVision expects images (B, {self.in_channels}, H, W), '
                f'got {tuple(x.shape)}; set in_channels for other inputs')
        x = self.patch_embed.conv_down(x)
        outs = []
        for i, level in enumerate(self.levels):
            x = level.run_blocks(x, self.with_cp and self.training)
            if i in self.out_indices:
                outs.append(getattr(self, f'outnorm{i}')(x).contiguous())
            if level.downsample is not None:
                x = level.downsample.reduction(x)
        return tuple(outs)
