"""Whole segmentor / detector checkpoints (e.g. the official UperNet, Mask
R-CNN and Cascade Mask R-CNN releases) -> an mmvim model.

The official dense releases were trained with mmseg 1.x / mmdet 3.x: their
``state_dict`` holds ``backbone.`` + the official dense wrapper's keys and the
heads / necks under mmseg's / mmdet's own names. :func:`convert_model_state`
runs the ``backbone.`` part through the backbone family's converter
(:meth:`MambaBackbone.convert_state_dict`) and keeps every other key as it
is; the result is checked key by key and shape by shape against the model.
:func:`load_model_checkpoint` is what ``tools/test.py`` / ``tools/train.py``
(``load_from``, ``--resume``) use through :class:`mmvim.engine.MMVimRunner`.

A checkpoint of another backbone family, of another size, of another head
layout or a backbone-only (ImageNet) file fails with a message that says
which and what to do.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from torch import Tensor

from .common import (
    CheckpointFileError,
    CheckpointMismatchError,
    ConversionReport,
    check_against_model,
    extract_state_dict,
    guess_family,
)

PREFIX = 'backbone.'

# (key, dim) whose size is the backbone's first-stage width, per family
_WIDTH = {
    'VMamba': ('layers.0.blocks.0.norm.weight', 0),
    'MambaVision': ('levels.0.blocks.0.conv1.weight', 0),
    'Vim': ('patch_embed.proj.weight', 0),
}
_STAGE_BLOCK = re.compile(r'^(?:layers|levels)\.(\d+)\.blocks\.(\d+)\.')
_LAYER = re.compile(r'^layers\.(\d+)\.')


def backbone_signature(state_dict: Dict[str, Tensor], family: str) -> str:
    """'depths (2, 2, 8, 2), width 96' for backbone-level keys of ``family``
    (for messages about checkpoints of the wrong size)."""
    if family == 'Vim':
        layers = {int(m.group(1)) for k in state_dict
                  if (m := _LAYER.match(k))}
        depth = f'depth {max(layers) + 1}' if layers else 'no layers'
    else:
        stages: Dict[int, int] = {}
        for key in state_dict:
            m = _STAGE_BLOCK.match(key)
            if m:
                stage, block = int(m.group(1)), int(m.group(2))
                stages[stage] = max(stages.get(stage, 0), block + 1)
        depth = f'depths {tuple(stages[i] for i in sorted(stages))}'
    key, dim = _WIDTH.get(family, (None, 0))
    if key in state_dict:
        return f'{depth}, width {state_dict[key].shape[dim]}'
    return depth


def _with_prefix(report: ConversionReport) -> ConversionReport:
    """The backbone report with every key under ``backbone.``."""
    def p(k):
        return PREFIX + k

    return ConversionReport(
        source=report.source,
        renamed={p(k): p(v) for k, v in report.renamed.items()},
        transformed={p(k): v for k, v in report.transformed.items()},
        dropped={p(k): v for k, v in report.dropped.items()},
        missing=[p(k) for k in report.missing])


def convert_model_state(checkpoint: dict, model, source: str = ''
                        ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Convert a loaded whole-model checkpoint for ``model`` (a segmentor or
    detector whose ``backbone`` is an mmvim backbone) and check it against
    the model. Wrong-family and backbone-only files raise
    :class:`CheckpointMismatchError`; everything else that does not fit is
    listed in the report (missing / unexpected / mismatched)."""
    try:
        sd, _ = extract_state_dict(checkpoint)
    except CheckpointMismatchError as err:
        raise CheckpointFileError(
            f'{source or "checkpoint"}: {err}') from None
    expected = model.state_dict()
    backbone = getattr(model, 'backbone', None)
    family = getattr(backbone, 'family', '')
    if not family:  # not an mmvim backbone: keys are taken as they are
        report = ConversionReport(source=source)
        check_against_model(report, sd, expected)
        return sd, report
    inner = {k[len(PREFIX):]: v for k, v in sd.items()
             if k.startswith(PREFIX)}
    if not inner:
        found = guess_family(sd)
        what = (f'a {found} backbone (e.g. ImageNet) checkpoint' if found
                else 'not a segmentor/detector checkpoint')
        raise CheckpointMismatchError(
            f'{source or "checkpoint"} has no {PREFIX!r} keys: it is {what}, '
            f'first keys {list(sd)[:5]}. Evaluate a trained segmentor / '
            'detector checkpoint, or start training from this file with '
            "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...).")
    found = guess_family(inner)
    if found and found != family:
        raise CheckpointMismatchError(
            f'{source or "checkpoint"} holds a {found} backbone '
            f'({backbone_signature(inner, found)}), but this config builds '
            f'a {family} ({backbone_signature(backbone.state_dict(), family)}'
            f'). Use a {found} config of the same size for this file.')
    converted, report = backbone.convert_state_dict(inner, source)
    report = _with_prefix(report)
    out = {PREFIX + k: v for k, v in converted.items()}
    for key, value in sd.items():
        if not key.startswith(PREFIX):
            out[key] = value
    check_against_model(report, out, expected)
    return out, report


def mismatch_message(report: ConversionReport, model, state: Dict[str, Tensor],
                     what: str = 'this model') -> str:
    """The report plus a hint naming the likely cause: a backbone of another
    size, or heads of another layout / number of classes."""
    lines = [report.summary()]
    backbone = getattr(model, 'backbone', None)
    family = getattr(backbone, 'family', '')
    inner = {k[len(PREFIX):]: v for k, v in state.items()
             if k.startswith(PREFIX)}
    if family and inner:
        theirs = backbone_signature(inner, family)
        ours = backbone_signature(backbone.state_dict(), family)
        if theirs != ours:
            lines.append(
                f'The checkpoint\'s {family} backbone has {theirs}; '
                f'{what} builds {ours}. Use the config of the checkpoint\'s '
                'size.')
    bad = report.missing + report.unexpected + [
        m.split(':')[0] for m in report.mismatched]
    heads = sorted({k.split('.')[0] for k in bad if not k.startswith(PREFIX)})
    if heads:
        lines.append(
            f'Keys outside the backbone do not fit ({", ".join(heads)}): the '
            'checkpoint was trained with other heads / neck or another '
            'number of classes than this config.')
    return '\n'.join(lines)


def load_model_checkpoint(model, filename: str, strict: bool = True,
                          map_location='cpu', checkpoint: Optional[dict] = None,
                          logger=None) -> Tuple[dict, ConversionReport]:
    """Load a whole-model checkpoint (official dense release or mmvim's own)
    into ``model``, converting the backbone part.

    With ``strict`` anything missing, unexpected or of another shape raises
    :class:`CheckpointMismatchError` naming the keys; without it (fine-tuning
    from another dataset's model, as mmengine's ``load_from``) the keys that
    fit are loaded and the rest is logged as a warning. Returns the file's
    contents and the report.
    """
    from mmengine.logging import MMLogger, print_log
    from mmengine.runner import CheckpointLoader
    if checkpoint is None:
        checkpoint = CheckpointLoader.load_checkpoint(
            filename, map_location=map_location)
    state, report = convert_model_state(checkpoint, model, str(filename))
    if strict and not report.ok:
        raise CheckpointMismatchError(
            mismatch_message(report, model, state) +
            f'\n{filename} does not fit the model of this config.')
    bad = {m.split(':')[0] for m in report.mismatched}
    model.load_state_dict({k: v for k, v in state.items() if k not in bad},
                          strict=False)
    logger = logger or MMLogger.get_current_instance()
    if report.ok:
        renamed = sum(k != v for k, v in report.renamed.items())
        notes = [f'{len(state)} tensors, all keys of the model filled']
        if renamed:
            notes.append(f'{renamed} backbone keys renamed')
        if report.dropped or report.transformed:
            notes.append(report.summary())
        print_log(f'loaded {filename}: ' + '; '.join(notes), logger=logger)
    else:
        print_log(mismatch_message(report, model, state) +
                  '\nOnly the keys that fit were loaded (strict=False).',
                  logger=logger, level=30)
    return checkpoint, report


def convert_model_file(src: str, dst: str, model) -> ConversionReport:
    """Offline: an official whole-model checkpoint -> mmvim's layout for
    ``model`` (built from the matching config), checked strictly. The file
    written holds 'state_dict' and 'meta' (the source's meta plus
    meta['mmvim'])."""
    import torch
    from mmengine.runner import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(src, map_location='cpu')
    state, report = convert_model_state(checkpoint, model, src)
    if not report.ok:
        raise CheckpointMismatchError(
            mismatch_message(report, model, state, 'the config') +
            f'\n{src} does not fit the model of the config.')
    _, meta = extract_state_dict(checkpoint)
    report.source_meta, report.source_keys = dict(meta), list(checkpoint)
    meta = {k: v for k, v in meta.items()
            if isinstance(v, (str, int, float, dict, list, tuple))}
    meta['mmvim'] = dict(arch=type(model.backbone).__name__, source=src,
                         whole_model=True)
    torch.save(dict(state_dict=state, meta=meta), dst)
    return report
