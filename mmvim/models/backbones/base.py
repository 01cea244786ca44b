"""What every mmvim backbone shares: converter-aware ``init_cfg`` loading
and frozen stages that stay frozen through ``train()``."""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from ...checkpoint.common import ConversionReport


class MambaBackbone(BaseModule):
    """Base class. Subclasses set ``family`` (the name the checkpoint code
    recognises, see ``mmvim.checkpoint.common.FAMILY_FRAGMENTS``),
    ``pretrained_loader`` (a function ``(model, filename, prefix=, strict=)``
    from :mod:`mmvim.checkpoint`), implement :meth:`convert_state_dict` and
    may override :meth:`frozen_modules`."""

    family: str = ''
    pretrained_loader: Callable = None
    frozen_stages: int = -1

    def convert_state_dict(self, state_dict: Dict[str, Tensor],
                           source: str = ''
                           ) -> Tuple[Dict[str, Tensor], ConversionReport]:
        """Official backbone-level keys (no ``backbone.`` prefix) -> this
        backbone's, with a report of every key. Used for whole segmentor /
        detector checkpoints (:mod:`mmvim.checkpoint.dense`)."""
        raise NotImplementedError

    def init_weights(self) -> None:
        """``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None,
        strict=True)`` goes through the family's converter; anything else is
        mmengine's usual initialisation."""
        if self.init_cfg and self.init_cfg.get('type') == 'Pretrained':
            type(self).pretrained_loader(
                self, self.init_cfg['checkpoint'],
                prefix=self.init_cfg.get('prefix'),
                strict=self.init_cfg.get('strict', True))
            self._is_init = True
            return
        super().init_weights()

    def frozen_modules(self) -> List[nn.Module]:
        """Modules frozen by ``frozen_stages`` (none by default)."""
        return []

    def freeze(self) -> None:
        """Eval mode and no gradients for :meth:`frozen_modules`."""
        for m in self.frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self.freeze()
        return self
