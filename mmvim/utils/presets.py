"""Named backbones for the analysis tools (benchmark, FLOPs, ERF): mmvim's
three families as used for dense prediction, and the transformer baselines
the papers compare against, built from mmseg's own classes.

    >>> from mmvim.utils.presets import build_preset
    >>> model = build_preset('deit_t', img_size=512)  # mmseg ViT, DeiT-Ti

Every preset returns a list of NCHW maps (``out_indices`` of 4 levels).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch.nn as nn

# name: (registry scope, class, kwargs). 'mmvim' classes come from
# mmvim.models; 'mmseg' classes from mmseg's MODELS registry.
PRESETS: Dict[str, Tuple[str, str, dict]] = {
    'vim_t': ('mmvim', 'Vim', dict(arch='tiny', out_indices=(5, 11, 17, 23))),
    'vim_s': ('mmvim', 'Vim', dict(arch='small', out_indices=(5, 11, 17, 23))),
    'vim_b': ('mmvim', 'Vim', dict(arch='base', out_indices=(5, 11, 17, 23))),
    'vmamba_t': ('mmvim', 'VMamba', dict(arch='tiny')),
    'vmamba_s': ('mmvim', 'VMamba', dict(arch='small')),
    'vmamba_b': ('mmvim', 'VMamba', dict(arch='base')),
    'mambavision_t': ('mmvim', 'MambaVision', dict(arch='T')),
    'mambavision_s': ('mmvim', 'MambaVision', dict(arch='S')),
    'mambavision_b': ('mmvim', 'MambaVision', dict(arch='B')),
    # DeiT-Ti/S (Touvron et al. 2021) as mmseg's ViT backbone: patch 16,
    # global attention, class token, features of blocks 3/6/9/12
    'deit_t': ('mmseg', 'VisionTransformer', dict(
        embed_dims=192, num_layers=12, num_heads=3, patch_size=16,
        out_indices=(2, 5, 8, 11), final_norm=True)),
    'deit_s': ('mmseg', 'VisionTransformer', dict(
        embed_dims=384, num_layers=12, num_heads=6, patch_size=16,
        out_indices=(2, 5, 8, 11), final_norm=True)),
    # Swin-T (Liu et al. 2021), mmseg's: 7x7 window attention
    'swin_t': ('mmseg', 'SwinTransformer', dict(
        embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
        window_size=7)),
}

# the transformer each mmvim family is compared with
BASELINE_OF = {'vim_t': 'deit_t', 'vim_s': 'deit_s', 'vmamba_t': 'swin_t',
               'mambavision_t': 'swin_t'}


def build_preset(name: str, img_size: Optional[int] = None,
                 **overrides) -> nn.Module:
    """Build preset ``name``. ``img_size`` sets the position-embedding grid
    of the plain models (Vim, DeiT) so that no resize runs per forward; the
    hierarchical ones take any size as they are."""
    if name not in PRESETS:
        raise KeyError(f'unknown preset {name!r}; choose one of '
                       f'{sorted(PRESETS)}')
    scope, cls_name, kwargs = PRESETS[name]
    kwargs = dict(kwargs, **overrides)
    if img_size is not None and cls_name in ('Vim', 'VisionTransformer'):
        kwargs['img_size'] = img_size
    if scope == 'mmvim':
        import mmvim.models as models
        return getattr(models, cls_name)(**kwargs)
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    # mmengine builds in the registry of the current default scope: one an
    # earlier mmdet run left behind must not send mmseg's types there
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(dict(type=cls_name, **kwargs))
