"""VMamba checkpoints: official classification releases -> :class:`VMamba`.

The released files (weights under 'model'; 'model_ema' is not used, as the
official dense code) already use our names, except for legacy files that the
official ``VSSM._load_from_state_dict`` renames: ``patch_embed.proj`` ->
``patch_embed.0``, ``patch_embed.norm`` -> ``patch_embed.2``, ``ln_1`` ->
``norm``, ``self_attention`` -> ``op``, top-level ``norm``/``head`` ->
``classifier.*``. ``classifier.*`` (the ImageNet head) is dropped on purpose;
the dense output norms ``outnorm{i}`` are not in a classification file and
keep their initialisation (reported). Everything else must match by name
and shape, or loading fails with the keys listed (the official loader only
prints the errors and trains from scratch).

The releases have K = 4 scan routes per SS2D (the per-route parameters
``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``,
``Ds`` have 4 rows each); a model built with ``scan_routes`` of another
length cannot take them, and :func:`check_route_count` says so.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from torch import Tensor

from .common import (
    CheckpointMismatchError,
    ConversionReport,
    convert_file,
    convert_for_model,
    load_converted,
    rename_and_drop,
)

PROBE = 'patch_embed.0.weight'
_REQUIRED = (PROBE, 'layers.0.blocks.0.op.x_proj_weight',
             'layers.0.blocks.0.op.A_logs')
_LEGACY = (
    (re.compile(r'^patch_embed\.proj\.'), 'patch_embed.0.'),
    (re.compile(r'^patch_embed\.norm\.'), 'patch_embed.2.'),
    (re.compile(r'^(layers\.\d+\.blocks\.\d+)\.ln_1\.'), r'\1.norm.'),
    (re.compile(r'^(layers\.\d+\.blocks\.\d+)\.self_attention\.'), r'\1.op.'),
    (re.compile(r'^norm\.'), 'classifier.norm.'),
    (re.compile(r'^head\.'), 'classifier.head.'),
)


def _modern_name(key: str) -> str:
    for pattern, repl in _LEGACY:
        key = pattern.sub(repl, key)
    return key


def check_route_count(state_dict: Dict[str, Tensor], model,
                      source: str = '') -> None:
    """Raise a clear error when ``state_dict`` (backbone-level keys, legacy
    names accepted) has another number of scan routes per SS2D than
    ``model`` (a :class:`VMamba`)."""
    weights = [v for k, v in state_dict.items()
               if _modern_name(k).endswith('.op.x_proj_weight')]
    routes = getattr(model, 'scan_routes', None)
    if not weights or routes is None or weights[0].dim() != 3:
        return
    have, want = weights[0].shape[0], len(routes)
    if have != want:
        raise CheckpointMismatchError(
            f'{source or "the checkpoint"} has {have} scan routes per SS2D '
            f'(x_proj_weight {tuple(weights[0].shape)}), but this VMamba has '
            f'K = {want}: scan_routes=({", ".join(routes.names)}). The '
            'per-route parameters (x_proj_weight, dt_projs_weight, '
            'dt_projs_bias, A_logs, Ds) cannot be loaded across K. To '
            f'fine-tune this file use exactly {have} routes, any of them '
            "(e.g. scan_routes=('snake', 'snake_column', 'snake_rev', "
            "'snake_column_rev') for an official file), or train from "
            'scratch with init_cfg=None.')


def convert_vmamba(state_dict: Dict[str, Tensor], source: str = ''
                   ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Rename legacy keys and drop the classifier of a VMamba state dict
    (backbone-level keys; see :func:`extract_state_dict`)."""
    return rename_and_drop(state_dict, _modern_name, ('classifier.', ),
                           'ImageNet classifier', _REQUIRED, 'VMamba', source)


def convert_vmamba_checkpoint(checkpoint: dict, model,
                              prefix: Optional[str] = None,
                              source: str = ''
                              ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Convert a loaded file for ``model`` (a :class:`VMamba`) and check it
    against the model (output norms reported as initialised; another
    number of scan routes is a clear error)."""
    def convert(sd, src):
        check_route_count(sd, model, src)
        return convert_vmamba(sd, src)
    return convert_for_model(checkpoint, model, prefix, source, convert,
                             PROBE)


def load_vmamba_pretrained(model, filename: str, prefix: Optional[str] = None,
                           strict: bool = True,
                           logger=None) -> ConversionReport:
    """Load an official VMamba checkpoint into ``model`` (error rules in
    :func:`mmvim.checkpoint.common.load_converted`)."""
    return load_converted(
        model, filename, convert_vmamba_checkpoint, 'VMamba',
        'the release file of the matching model (links in the VMamba '
        'README, github.com/MzeroMiko/VMamba)', prefix, strict, logger)


def convert_vmamba_file(src: str, dst: str) -> ConversionReport:
    """Offline conversion: official file -> backbone weights under
    'state_dict' that :class:`VMamba` loads directly."""
    return convert_file(src, dst, convert_vmamba, PROBE, 'VMamba')
