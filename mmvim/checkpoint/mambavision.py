"""MambaVision checkpoints: official releases -> :class:`MambaVision`.

The release files (``mambavision_*_1k.pth.tar``) hold the weights under
'state_dict' (the official loader also accepts 'model' or a bare dict, and
strips 'module.' / 'encoder.' prefixes) with our names already. The ImageNet
head (``norm.*``, a BatchNorm, and ``head.*``) is dropped on purpose; the
dense output norms ``outnorm{i}`` keep their initialisation (reported).
Anything else must match by name and shape, or loading fails with the keys
listed (the official dense code loads with strict=False and goes on).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from torch import Tensor

from .common import (
    ConversionReport,
    convert_file,
    convert_for_model,
    load_converted,
    rename_and_drop,
)

PROBE = 'patch_embed.conv_down.0.weight'
_REQUIRED = (PROBE, 'levels.0.blocks.0.conv1.weight')
_PREFIXES = ('module.', 'encoder.')


def _strip_wrappers(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def convert_mambavision(state_dict: Dict[str, Tensor], source: str = ''
                        ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Strip wrapper prefixes and drop the classifier of a MambaVision state
    dict."""
    return rename_and_drop(state_dict, _strip_wrappers, ('norm.', 'head.'),
                           'ImageNet classifier (norm + head)', _REQUIRED,
                           'MambaVision', source)


def convert_mambavision_checkpoint(checkpoint: dict, model,
                                   prefix: Optional[str] = None,
                                   source: str = ''
                                   ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Convert a loaded file for ``model`` (a :class:`MambaVision`) and check it
    against the model (output norms reported as initialised)."""
    return convert_for_model(checkpoint, model, prefix, source,
                             convert_mambavision, PROBE)


def load_mambavision_pretrained(model, filename: str,
                                prefix: Optional[str] = None,
                                strict: bool = True,
                                logger=None) -> ConversionReport:
    """Load an official MambaVision checkpoint into ``model`` (error rules in
    :func:`mmvim.checkpoint.common.load_converted`)."""
    return load_converted(
        model, filename, convert_mambavision_checkpoint, 'MambaVision',
        'the release (https://huggingface.co/nvidia/MambaVision-<size>-1K, '
        'file mambavision_<size>_1k.pth.tar)', prefix, strict, logger)


def convert_mambavision_file(src: str, dst: str) -> ConversionReport:
    """Offline conversion: official file -> backbone weights under
    'state_dict' that :class:`MambaVision` loads directly."""
    return convert_file(src, dst, convert_mambavision, PROBE, 'MambaVision')
