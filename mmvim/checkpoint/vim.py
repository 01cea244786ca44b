"""Vim checkpoints: the official ImageNet releases -> :class:`mmvim.models.Vim`.

The released files (``hustvl/Vim-{tiny,small,base}-midclstok``, weights under
'model') already use our parameter names. What changes:

* ``pos_embed`` (1, N + 1, C) holds the class token's entry at index N // 2
  (the token is inserted in the MIDDLE of the sequence; the official seg/det
  loaders wrongly drop index 0). That entry is removed (or kept, for a model
  with the class token), and the 14x14 patch grid is resized (bicubic,
  align_corners=False) to the model's grid.
* ``cls_token`` is dropped for the dense model without it; ``head.*`` (the
  ImageNet classifier) always; ``norm_f.weight`` unless ``final_norm``;
  ``rope.freqs_*`` (recomputed per input grid).

Every key is accounted for in a :class:`ConversionReport`; a key with no
place in the model, a model key left unfilled or a shape mismatch is an
error (``strict=False`` turns the first two into warnings).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.misc import is_exporting
from .common import (
    CheckpointMismatchError,
    ConversionReport,
    check_against_model,
    convert_file,
    extract_state_dict,
    load_converted,
    require_keys,
    select_prefix,
)

PROBE = 'layers.0.mixer.in_proj.weight'
_REQUIRED = ('patch_embed.proj.weight', 'pos_embed', PROBE)


def _check_is_vim(sd: Dict[str, Tensor], source: str) -> None:
    require_keys(sd, _REQUIRED, 'Vim', source)


def _square_grid(num: int, what: str) -> Tuple[int, int]:
    side = math.isqrt(num)
    if side * side != num:
        raise CheckpointMismatchError(
            f'{what}: {num} position entries do not form a square grid; '
            "pass the source grid (convert_vim(..., src_grid=(H, W)))")
    return side, side


def resize_pos_embed(pos: Tensor, src_grid: Tuple[int, int],
                     dst_grid: Tuple[int, int],
                     mode: str = 'bicubic') -> Tensor:
    """(1, h*w, C) patch position embeddings -> (1, H*W, C). (While a graph
    is exported the resize is always in it: the grid may be dynamic.)"""
    if not is_exporting() and tuple(src_grid) == tuple(dst_grid):
        return pos
    c = pos.shape[-1]
    grid = pos.reshape(1, *src_grid, c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(dst_grid), mode=mode,
                         align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(pos.dtype)


def convert_vim(state_dict: Dict[str, Tensor],
                grid: Tuple[int, int],
                with_cls_token: bool = False,
                final_norm: bool = False,
                src_grid: Optional[Tuple[int, int]] = None,
                src_cls_position: str = 'middle',
                interpolate_mode: str = 'bicubic',
                source: str = '') -> Tuple[Dict[str, Tensor],
                                           ConversionReport]:
    """Convert an official (or already converted) Vim state dict.

    Args:
        state_dict: backbone-level keys (use :func:`extract_state_dict` /
            :func:`select_prefix` for wrapped or full-model files).
        grid: the target model's patch grid (``Vim.grid_size``).
        with_cls_token: whether the target keeps the class token.
        final_norm: whether the target has ``norm_f``.
        src_grid: the source patch grid; inferred as square by default.
        src_cls_position: where the source inserted its class token:
            'middle' (every release) or 'head' (index 0, older files).
        interpolate_mode: position-embedding resize mode.
        source: a name for messages.

    Returns:
        The converted state dict and the report of every source key.
    """
    if src_cls_position not in ('middle', 'head'):
        raise ValueError("src_cls_position must be 'middle' or 'head'")
    _check_is_vim(state_dict, source)
    report = ConversionReport(source=source)
    out: Dict[str, Tensor] = {}
    has_cls = 'cls_token' in state_dict
    for key, value in state_dict.items():
        if key.startswith('head.'):
            report.dropped[key] = 'ImageNet classifier'
        elif key == 'norm_f.weight' and not final_norm:
            report.dropped[key] = 'final norm, unused by dense features'
        elif key.startswith('rope.'):
            report.dropped[key] = 'RoPE tables are recomputed per grid'
        elif key == 'cls_token' and not with_cls_token:
            report.dropped[key] = \
                'class token, removed for dense prediction as officially'
        elif key != 'pos_embed':
            out[key] = value
            report.renamed[key] = key
    pos = state_dict['pos_embed']
    num = pos.shape[1] - int(has_cls)
    cls_pos = None
    if has_cls:
        idx = num // 2 if src_cls_position == 'middle' else 0
        cls_pos = pos[:, idx:idx + 1]
        pos = torch.cat((pos[:, :idx], pos[:, idx + 1:]), 1)
    src_grid = tuple(src_grid) if src_grid else _square_grid(num, 'pos_embed')
    if src_grid[0] * src_grid[1] != num:
        raise CheckpointMismatchError(
            f'pos_embed has {num} patch entries, not src_grid {src_grid}')
    pos = resize_pos_embed(pos, src_grid, grid, interpolate_mode)
    how = []
    if has_cls:
        how.append(f'class-token entry at index {idx} removed')
    if tuple(src_grid) != tuple(grid):
        how.append(f'{src_grid[0]}x{src_grid[1]} grid resized '
                   f'({interpolate_mode}) to {grid[0]}x{grid[1]}')
    if with_cls_token:
        if cls_pos is None:
            report.missing.append('pos_embed (class-token entry)')
        else:
            mid = pos.shape[1] // 2
            pos = torch.cat((pos[:, :mid], cls_pos, pos[:, mid:]), 1)
            how.append(f'class-token entry re-inserted at index {mid}')
    out['pos_embed'] = pos
    if how:
        report.transformed['pos_embed'] = '; '.join(how)
    return out, report


def convert_vim_checkpoint(checkpoint: dict, model, prefix: Optional[str] = None,
                           source: str = '') -> Tuple[Dict[str, Tensor],
                                                      ConversionReport]:
    """Convert a loaded checkpoint file for ``model`` (a :class:`Vim`) and
    check it against the model's parameters (report filled, not raised)."""
    sd, meta = extract_state_dict(checkpoint)
    sd, outside = select_prefix(sd, prefix, PROBE)
    info = meta.get('mmvim', {}) if isinstance(meta, dict) else {}
    src_grid = info.get('grid') if info.get('arch') == 'Vim' else None
    converted, report = convert_vim(
        sd, model.grid_size, model.with_cls_token, model.final_norm,
        src_grid=src_grid, interpolate_mode=model.interpolate_mode,
        source=source)
    report.dropped.update(outside)
    expected = model.state_dict()
    check_against_model(report, converted, expected)
    return converted, report


def load_vim_pretrained(model, filename: str, prefix: Optional[str] = None,
                        strict: bool = True, logger=None) -> ConversionReport:
    """Load an official or converted Vim checkpoint into ``model`` (see
    :func:`mmvim.checkpoint.common.load_converted` for the error rules)."""
    return load_converted(
        model, filename, convert_vim_checkpoint, 'Vim',
        'the ImageNet release (https://huggingface.co/hustvl/'
        'Vim-{tiny,small,base}-midclstok)', prefix, strict, logger)


def convert_vim_file(src: str, dst: str, img_size=(224, 224),
                     patch_size: int = 16, stride: Optional[int] = None,
                     with_cls_token: bool = False,
                     final_norm: bool = False) -> ConversionReport:
    """Offline conversion: official file -> a file any :class:`Vim` with
    these settings loads directly (weights under 'state_dict', conversion
    settings under meta['mmvim'])."""
    stride = stride or patch_size
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    grid = tuple((s - patch_size) // stride + 1 for s in img_size)

    def convert(sd, source):
        return convert_vim(sd, grid, with_cls_token, final_norm,
                           source=source)

    return convert_file(src, dst, convert, PROBE, 'Vim', grid=list(grid),
                        with_cls_token=with_cls_token)
