"""Vision Mamba (Vim, Zhu et al. 2024) as an mmseg/mmdet backbone.

Plain, ViT-like: a stride-16 patch embedding, an absolute position
embedding, then ``depth`` blocks at one resolution. Each block is
"add -> RMSNorm -> bidirectional Mamba mixer" with the residual stream kept
apart (in float32 by default)::

    residual_i = residual_{i-1} + drop_path_i(hidden_{i-1})   (block 0: x)
    hidden_i   = BiMambaMixer(RMSNorm(residual_i))

Tokens ``(B, Hp*Wp, C)`` (row-major) are returned as NCHW maps
``(B, C, Hp, Wp)`` for the blocks in ``out_indices``; ``feature`` picks what
the official dense code offers: the block output ``hidden_i`` ('hidden',
the segmentation default) or the residual stream after the block,
``residual_i + hidden_i`` ('residual', ``use_residual_as_feature`` /
``last_layer_process='add'``). Parameter names equal the official ones, so
the released ImageNet files load with only the class token / position
embedding handled (see :mod:`mmvim.checkpoint.vim`).

Scan route. ``scan_route`` (:mod:`mmvim.ops.routes`) is the order in which
the mixers read the patch tokens in the forward direction; the backward
direction is always its reversal (the mixer reads the sequence it is given
both ways). The default 'raster' is the released row-major order and runs
exactly as before. Any other route permutes the tokens ONCE, after the
patch and position embeddings (which stay attached to their grid
positions), and the features go back to raster (B, C, Hp, Wp) maps at the
output; RoPE rotates each token by its own grid position. A class token is
not part of the route: the patch tokens are put in route order and the
class token is inserted in the middle of that sequence (position N // 2),
as the releases insert it in the middle of the raster sequence. No
parameter depends on the route, so every route loads the official
checkpoints.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from torch import Tensor

from ...checkpoint.vim import convert_vim, load_vim_pretrained, resize_pos_embed
from ...ops.routes import RouteSpec, ScanRoutes
from ...registry import register_model
from ...utils.misc import is_exporting
from ..layers import BiMambaMixer, RMSNorm, RotaryEmbedding2d
from .base import MambaBackbone

# The released settings (hustvl/Vim-{tiny,small,base}-midclstok): d_state 16,
# expand 2, RMSNorm, fp32 residual, v2 mixer with averaged directions.
ARCH_SETTINGS = {
    'tiny': dict(embed_dims=192, depth=24),
    'small': dict(embed_dims=384, depth=24),
    'base': dict(embed_dims=768, depth=24),
}


class VimBlock(nn.Module):
    """Add -> RMSNorm -> mixer; returns (hidden, residual)."""

    def __init__(self, dim: int, mixer: nn.Module, drop_path: float = 0.0,
                 norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True) -> None:
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: Tensor,
                residual: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        residual = hidden if residual is None else \
            residual + self.drop_path(hidden)
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(self.norm(residual).to(hidden.dtype)), residual


def _lecun_normal_(w: Tensor) -> None:
    """Truncated normal with variance 1/fan_in (timm's lecun_normal_)."""
    fan_in = w[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


@register_model()
class Vim(MambaBackbone):
    """Vision Mamba backbone for dense prediction.

    Args:
        arch: 'tiny' | 'small' | 'base' (see ``ARCH_SETTINGS``); any of the
            preset values can be overridden by ``embed_dims`` / ``depth``.
        img_size: training size (int or (H, W)); sets the stored position
            embedding grid. Other sizes work: the embedding is resized at
            run time.
        patch_size: patch (conv kernel) size. Defaults to 16.
        stride: patch stride; defaults to ``patch_size`` (8 for the '+'
            fine-tuned releases).
        in_channels: image channels. Defaults to 3.
        embed_dims, depth: override the preset.
        d_state, d_conv, expand, dt_rank: mixer settings (official 16, 4, 2,
            'auto' = ceil(embed_dims / 16)).
        out_indices: blocks whose features are returned (negative indices
            count from the end). Defaults to the last block.
        feature: 'hidden' (block output) or 'residual' (residual stream after
            the block), see the module docstring.
        with_cls_token: keep the class token (inserted in the middle of the
            sequence, as the releases) in the forward pass. The official
            dense code removes it (the default here).
        scan_route: order of the patch tokens in the forward scan (a name or
            ``dict(type=name, **kwargs)``, :mod:`mmvim.ops.routes`); the
            backward scan is its reversal. Defaults to 'raster' (released).
        use_rope, rope_residual, pt_seq_len: optional 2-D RoPE before every
            block on the hidden (and residual) tokens, as the official
            ``if_rope`` / ``if_rope_residual`` (used by the Vim-S
            segmentation and the ViTDet configs).
        drop_rate: dropout after the position embedding.
        drop_path_rate: stochastic depth; block i uses
            ``([0] + linspace(0, rate, depth))[i]`` as the official code.
        norm_eps: RMSNorm epsilon. Defaults to 1e-5.
        residual_in_fp32: keep the residual stream in float32.
        divide_out: average (not sum) the two scan directions.
        fused_scan: both directions in one grouped scan call.
        final_norm: apply the final RMSNorm (``norm_f``) to the output of the
            last block (only if it is in ``out_indices``); the official dense
            code does not.
        interpolate_mode: position-embedding resize mode ('bicubic').
        with_cp: gradient checkpointing of each block (saves memory).
        frozen_stages: freeze the patch embedding and position embedding
            (0) and blocks 0..frozen_stages-1; -1 freezes nothing.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` loads an
            official release file or a converted one (converted on load,
            every key accounted for; see :mod:`mmvim.checkpoint.vim`).
    """

    arch_settings = ARCH_SETTINGS
    family = 'Vim'
    pretrained_loader = load_vim_pretrained

    def __init__(self,
                 arch: str = 'tiny',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 stride: Optional[int] = None,
                 in_channels: int = 3,
                 embed_dims: Optional[int] = None,
                 depth: Optional[int] = None,
                 d_state: int = 16,
                 d_conv: int = 4,
                 expand: int = 2,
                 dt_rank: Union[int, str] = 'auto',
                 out_indices: Union[int, Sequence[int]] = -1,
                 feature: str = 'hidden',
                 with_cls_token: bool = False,
                 scan_route: RouteSpec = 'raster',
                 use_rope: bool = False,
                 rope_residual: bool = False,
                 pt_seq_len: int = 14,
                 drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True,
                 divide_out: bool = True,
                 fused_scan: bool = True,
                 final_norm: bool = False,
                 interpolate_mode: str = 'bicubic',
                 with_cp: bool = False,
                 frozen_stages: int = -1,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if arch not in self.arch_settings:
            raise ValueError(f'Vim: unknown arch {arch!r}; choose one of '
                             f'{sorted(self.arch_settings)} and override '
                             'embed_dims / depth for other sizes')
        preset = self.arch_settings[arch]
        self.arch = arch
        self.embed_dims = dim = embed_dims or preset['embed_dims']
        self.depth = depth = depth or preset['depth']
        if feature not in ('hidden', 'residual'):
            raise ValueError(f"Vim: feature must be 'hidden' or 'residual', "
                             f'got {feature!r}')
        self.feature = feature
        self.img_size = (img_size, img_size) if isinstance(img_size, int) \
            else tuple(img_size)
        self.patch_size = patch_size
        self.stride = stride or patch_size
        self.in_channels = in_channels
        self.grid_size = tuple((s - patch_size) // self.stride + 1
                               for s in self.img_size)
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        self.out_indices = tuple(i + depth if i < 0 else i
                                 for i in out_indices)
        for i in self.out_indices:
            if not 0 <= i < depth:
                raise ValueError(f'Vim: out_indices {tuple(out_indices)} out '
                                 f'of range for depth {depth}')
        self.with_cls_token = with_cls_token
        self.scan_route = ScanRoutes(scan_route)
        if len(self.scan_route) != 1:
            raise ValueError(
                f'Vim: scan_route is ONE route (the forward direction; the '
                f'backward direction is its reversal), got {scan_route!r}')
        self.raster = self.scan_route == 'raster'
        self.interpolate_mode = interpolate_mode
        self.with_cp = with_cp
        self.frozen_stages = frozen_stages
        self.rope_residual = rope_residual

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, dim, patch_size,
                                          self.stride)
        num_patches = self.grid_size[0] * self.grid_size[1]
        if with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + int(with_cls_token), dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.rope = RotaryEmbedding2d(dim, pt_seq_len) \
            if use_rope else None

        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            VimBlock(dim,
                     BiMambaMixer(dim, d_state=d_state, d_conv=d_conv,
                                  expand=expand, dt_rank=dt_rank,
                                  divide_out=divide_out, fused=fused_scan,
                                  num_layers=depth),
                     drop_path=dpr[i], norm_eps=norm_eps,
                     residual_in_fp32=residual_in_fp32)
            for i in range(depth))
        self.final_norm = final_norm
        if final_norm:
            self.norm_f = RMSNorm(dim, eps=norm_eps)
        self._official_init()
        self.freeze()

    # ------------------------------------------------------------------
    @torch.no_grad()
    def _official_init(self) -> None:
        """Random init as the official VisionMamba (mixers init themselves)."""
        _lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.with_cls_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def convert_state_dict(self, state_dict, source=''):
        """Position embedding fitted to this model's grid and class token
        (a file at this model's own size keeps its grid, square or not)."""
        pos = state_dict.get('pos_embed')
        own = pos is not None and pos.shape == self.pos_embed.shape
        return convert_vim(state_dict, self.grid_size, self.with_cls_token,
                           self.final_norm,
                           src_grid=self.grid_size if own else None,
                           interpolate_mode=self.interpolate_mode,
                           source=source)

    def frozen_modules(self) -> List[nn.Module]:
        """Patch embedding, position embedding (and class token) for
        ``frozen_stages >= 0``, then blocks 0..frozen_stages-1."""
        if self.frozen_stages < 0:
            return []
        embed = nn.ParameterList([self.pos_embed])
        if self.with_cls_token:
            embed.append(self.cls_token)
        return [self.patch_embed, self.pos_drop, embed] + list(
            self.layers[:self.frozen_stages])

    # ------------------------------------------------------------------
    def resized_pos_embed(self, grid: Tuple[int, int]) -> Tensor:
        """Patch position embeddings (1, gh*gw, C) for a token grid."""
        pos = self.pos_embed
        if self.with_cls_token:
            mid = (pos.shape[1] - 1) // 2  # the class token's entry, N // 2
            pos = torch.cat((pos[:, :mid], pos[:, mid + 1:]), 1)
        return resize_pos_embed(pos, self.grid_size, grid,
                                self.interpolate_mode)

    def _embed(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'Vim expects images (B, {self.in_channels}, H, W), got '
                f'{tuple(x.shape)}; set in_channels for other inputs')
        h, w = x.shape[-2:]
        if self.stride == self.patch_size:
            # pad bottom/right to a whole number of patches (as mmseg's ViT)
            ph, pw = (-h) % self.patch_size, (-w) % self.patch_size
            if is_exporting() or ph or pw:  # (H, W may be dynamic then)
                x = F.pad(x, (0, pw, 0, ph))
        elif min(h, w) < self.patch_size:
            raise ValueError(f'Vim: input {h}x{w} is smaller than the patch '
                             f'size {self.patch_size}')
        x = self.patch_embed.proj(x)
        grid = tuple(x.shape[-2:])
        return x.flatten(2).transpose(1, 2), grid

    def route_orders(self, grid: Tuple[int, int], device
                     ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(order, inverse) (Hp*Wp,) of the scan route on ``grid``; (None,
        None) for 'raster' (no permutation at all)."""
        if self.raster:
            return None, None
        orders, inverse = self.scan_route.orders(*grid, device)
        return orders[0], inverse[0]

    def _rope(self, tokens: Tensor, grid: Tuple[int, int],
              cls_at: Optional[int], order: Optional[Tensor]) -> Tensor:
        """RoPE on the patch tokens (a class token is left as it is), in
        route ``order`` (None: raster)."""
        if cls_at is None:
            return self.rope(tokens, grid, order)
        patches = torch.cat((tokens[:, :cls_at], tokens[:, cls_at + 1:]), 1)
        patches = self.rope(patches, grid, order)
        return torch.cat((patches[:, :cls_at], tokens[:, cls_at:cls_at + 1],
                          patches[:, cls_at:]), 1)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images (B, C, H, W) -> tuple of (B, embed_dims, Hp, Wp) maps."""
        batch = x.shape[0]
        tokens, grid = self._embed(x)
        tokens = tokens + self.resized_pos_embed(grid)
        order, inverse = self.route_orders(grid, tokens.device)
        if order is not None:  # patch tokens in scan order, once
            tokens = tokens.index_select(1, order)
        cls_at = None
        if self.with_cls_token:
            cls_at = tokens.shape[1] // 2
            mid = (self.pos_embed.shape[1] - 1) // 2
            cls = self.cls_token + self.pos_embed[:, mid:mid + 1]
            tokens = torch.cat((tokens[:, :cls_at], cls.expand(batch, -1, -1),
                                tokens[:, cls_at:]), 1)
        hidden, residual = self.pos_drop(tokens), None
        feats = {}
        last = self.depth - 1
        for i, layer in enumerate(self.layers):
            if self.rope is not None:
                hidden = self._rope(hidden, grid, cls_at, order)
                if residual is not None and self.rope_residual:
                    residual = self._rope(residual, grid, cls_at, order)
            if self.with_cp and self.training and hidden.requires_grad:
                hidden, residual = cp.checkpoint(layer, hidden, residual,
                                                 use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
            # the residual stream after block i-1 is the one block i used
            if self.feature == 'residual' and i - 1 in self.out_indices:
                feats[i - 1] = residual
            if self.feature == 'hidden' and i in self.out_indices:
                feats[i] = hidden
        if last in self.out_indices:
            if self.feature == 'residual' or self.final_norm:
                feats[last] = residual + hidden
            if self.final_norm:
                feats[last] = self.norm_f(feats[last])
        return tuple(self._to_map(feats[i], grid, cls_at, inverse)
                     for i in self.out_indices)

    def _to_map(self, tokens: Tensor, grid: Tuple[int, int],
                cls_at: Optional[int], inverse: Optional[Tensor]) -> Tensor:
        """Patch tokens (class token dropped) back in raster order as a
        (B, C, Hp, Wp) map."""
        if cls_at is not None:
            tokens = torch.cat((tokens[:, :cls_at], tokens[:, cls_at + 1:]),
                               1)
        if inverse is not None:
            tokens = tokens.index_select(1, inverse)
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *grid).contiguous()
