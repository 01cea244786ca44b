"""Layer-wise learning-rate decay for plain (ViT-like) backbones such as Vim.

Parameter ``backbone.layers.i.*`` gets ``lr * rate ** (num_layers - i)``,
the embeddings (``pos_embed``, ``cls_token``, ``patch_embed``) get
``rate ** (num_layers + 1)`` and everything else (neck, heads) the base lr.
This is the BEiT / ViTDet rule and what the official Vim detection code
applies (``get_vim_lr_decay_rate``).

Weight decay is off for the parameters named in ``no_decay_names`` (matched
against the last part of the name; by default Vim's ``A_log``, ``A_b_log``,
``D``, ``D_b``, ``pos_embed`` and ``cls_token``) and, with
``no_decay_1d=True``, for every 1-D parameter (norm weights, biases).

``decay_blocks=False`` leaves the blocks at the base lr and only decays the
embeddings: what the official Vim *segmentation* code effectively ran (its
constructor looks for ``backbone.blocks.*``, a name Vim does not have).
"""
from __future__ import annotations

from typing import List, Optional

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import register_optim_constructor

DEFAULT_NO_DECAY = ('A_log', 'A_b_log', 'D', 'D_b', 'pos_embed', 'cls_token')
_EMBEDDINGS = ('pos_embed', 'cls_token', 'patch_embed')


@register_optim_constructor()
class VimLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg`` keys:

    * ``layer_decay_rate`` (float, required)
    * ``num_layers`` (int): defaults to ``len(model.backbone.layers)``
    * ``decay_blocks`` (bool, True): see the module docstring
    * ``no_decay_names`` (list of str): see the module docstring
    * ``no_decay_1d`` (bool, True)
    * ``prefix`` (str, 'backbone.'): where the backbone's parameters live
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None) -> None:
        if not paramwise_cfg or 'layer_decay_rate' not in paramwise_cfg:
            raise ValueError('VimLayerDecayOptimizerConstructor needs '
                             'paramwise_cfg=dict(layer_decay_rate=...)')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module,
                   prefix: str = '', is_dcn_module: Optional[int] = None,
                   **kwargs) -> None:
        cfg = dict(self.paramwise_cfg)
        rate = float(cfg['layer_decay_rate'])
        bb = cfg.get('prefix', 'backbone.')
        num_layers = cfg.get('num_layers')
        if num_layers is None:
            backbone = getattr(module, bb.rstrip('.'), module) if bb else \
                module
            if not hasattr(backbone, 'layers'):
                raise ValueError('VimLayerDecayOptimizerConstructor: set '
                                 'paramwise_cfg.num_layers (the model has '
                                 f'no {bb}layers)')
            num_layers = len(backbone.layers)
        decay_blocks = cfg.get('decay_blocks', True)
        no_decay_names = set(cfg.get('no_decay_names', DEFAULT_NO_DECAY))
        no_decay_1d = cfg.get('no_decay_1d', True)
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id = num_layers + 1
            local = name[len(bb):] if name.startswith(bb) else None
            if local is not None:
                if local.split('.')[0] in _EMBEDDINGS:
                    layer_id = 0
                elif local.startswith('layers.') and decay_blocks:
                    layer_id = int(local.split('.')[1]) + 1
            no_wd = name.split('.')[-1] in no_decay_names or (
                no_decay_1d and (param.ndim == 1 or name.endswith('.bias')))
            key = (layer_id, no_wd)
            if key not in groups:
                scale = rate ** (num_layers + 1 - layer_id)
                groups[key] = dict(
                    params=[], param_names=[], lr_scale=scale,
                    lr=self.base_lr * scale,
                    weight_decay=0.0 if no_wd else self.base_wd)
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        summary = ', '.join(
            f'layer {lid}{" no-wd" if nw else ""}: '
            f'{len(g["params"])} params x{g["lr_scale"]:.3g}'
            for (lid, nw), g in sorted(groups.items()))
        print_log(f'layer-wise lr decay {rate} over {num_layers} layers: '
                  f'{summary}', logger='current')
        for g in groups.values():
            g.pop('param_names')
        params.extend(groups.values())
