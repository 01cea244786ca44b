"""Pieces every checkpoint converter shares: unwrapping, reports, checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from torch import Tensor

# Containers the official releases and OpenMMLab use for the weights.
_WRAPPERS = ('model', 'state_dict', 'model_ema', 'module')


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model it is loaded into."""


class CheckpointFileError(CheckpointMismatchError):
    """A file that is not a usable checkpoint at all: missing, empty,
    truncated (an interrupted save), of another format, or not a training
    checkpoint where ``--resume`` needs one. The message is one line that
    names the file and what is wrong with it."""


class UnsafeCheckpointError(CheckpointFileError):
    """A file whose unpickling would call something that could run code
    (``os.system``, ``builtins.eval``, an unknown class with a reducer).
    Nothing was run; the one-line message names the file, the global and
    the opt-in (``MMVIM_TRUST_CHECKPOINTS=1``)."""


def extract_state_dict(obj: Mapping) -> Tuple[Dict[str, Tensor], dict]:
    """Weights and ``meta`` of a loaded checkpoint file.

    Accepts a bare state dict or one wrapped under 'model' (official
    releases), 'state_dict' (OpenMMLab) or 'module'; strips a DDP 'module.'
    prefix.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f'checkpoint holds a {type(obj).__name__}, not a dict with a '
            'state dict')
    meta = obj.get('meta', {})
    sd = obj
    for key in _WRAPPERS:
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(
            isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointMismatchError(
            'checkpoint holds no state dict (looked at the top level and '
            f'under {_WRAPPERS}); top-level keys: {list(obj)[:10]}')
    sd = dict(sd)
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd, dict(meta or {})


def select_prefix(sd: Dict[str, Tensor], prefix: Optional[str],
                  probe: str) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Keep the keys under ``prefix`` (stripped), e.g. 'backbone.'.

    Without a prefix, a full detector/segmentor checkpoint (no ``probe`` key
    at the top level but 'backbone.' + probe) is narrowed to its backbone.
    Returns the selected dict and the keys left out, with the reason.
    """
    if prefix is None and probe not in sd and 'backbone.' + probe in sd:
        prefix = 'backbone.'
    if not prefix:
        return sd, {}
    kept = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not kept:
        raise CheckpointMismatchError(
            f'no key of the checkpoint starts with prefix {prefix!r}; '
            f'first keys: {list(sd)[:8]}')
    left = {k: f'outside prefix {prefix!r}' for k in sd
            if not k.startswith(prefix)}
    return kept, left


@dataclass
class ConversionReport:
    """What happened to every key of a source checkpoint."""

    source: str = ''
    renamed: Dict[str, str] = field(default_factory=dict)  # src -> ours
    transformed: Dict[str, str] = field(default_factory=dict)  # ours -> how
    dropped: Dict[str, str] = field(default_factory=dict)  # src -> reason
    missing: List[str] = field(default_factory=list)  # ours, unfilled
    unexpected: List[str] = field(default_factory=list)  # no place in ours
    mismatched: List[str] = field(default_factory=list)  # 'key: a vs b'

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 12) -> str:
        def listing(items) -> str:
            items = list(items)
            more = f' ... (+{len(items) - limit} more)' \
                if len(items) > limit else ''
            return ', '.join(items[:limit]) + more

        lines = [f'checkpoint conversion{" of " + self.source if self.source else ""}:']
        changed = sum(k != v for k, v in self.renamed.items())
        if changed:
            lines.append(f'  renamed {changed} keys')
        if len(self.renamed) > changed:
            lines.append(f'  {len(self.renamed) - changed} keys taken by '
                         'the same name')
        for key, how in self.transformed.items():
            lines.append(f'  {key}: {how}')
        reasons: Dict[str, List[str]] = {}
        for key, why in self.dropped.items():
            reasons.setdefault(why, []).append(key)
        for why, keys in reasons.items():
            lines.append(f'  dropped on purpose ({why}): {listing(keys)}')
        if self.missing:
            lines.append(f'  MISSING in the checkpoint: {listing(self.missing)}')
        if self.unexpected:
            lines.append('  UNEXPECTED (no place in the model): '
                         f'{listing(self.unexpected)}')
        if self.mismatched:
            lines.append(f'  SHAPE MISMATCH: {listing(self.mismatched)}')
        return '\n'.join(lines)


def check_against_model(report: ConversionReport, converted: Dict[str, Tensor],
                        expected: Mapping[str, Tensor]) -> None:
    """Fill ``missing``/``unexpected``/``mismatched`` of ``report``."""
    for key, value in converted.items():
        if key not in expected:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            report.mismatched.append(
                f'{key}: checkpoint {tuple(value.shape)} vs model '
                f'{tuple(expected[key].shape)}')
    report.missing.extend(k for k in expected if k not in converted)


# Key fragments that identify each family (for "wrong checkpoint" messages).
# (``outnorm{i}`` is not one: VMamba and MambaVision dense files both have
# it.) Checked in order.
FAMILY_FRAGMENTS = {
    'Vim': ('layers.0.mixer.A_b_log', 'layers.0.mixer.in_proj'),
    'VMamba': ('.blocks.0.op.x_proj_weight', '.blocks.0.op.A_logs',
               'self_attention'),
    'MambaVision': ('levels.0.', 'patch_embed.conv_down'),
    'Swin': ('attn.w_msa.', 'relative_position_bias_table'),
    'ViT/DeiT': ('blocks.0.attn.', 'layers.0.attn.'),
    'ResNet': ('layer1.0.conv1.', 'stem.0.'),
}


def guess_family(keys) -> Optional[str]:
    """The backbone family a list of state-dict keys looks like, if any."""
    keys = list(keys)
    for name, fragments in FAMILY_FRAGMENTS.items():
        if any(f in k for k in keys for f in fragments):
            return name
    return None


def require_keys(sd: Dict[str, Tensor], required, family: str,
                 source: str = '') -> None:
    """Raise a clear error if ``sd`` lacks keys every ``family`` file has."""
    absent = [k for k in required if k not in sd]
    if not absent:
        return
    other = guess_family(sd)
    hint = f' It looks like a {other} checkpoint.' if other and \
        other != family else ''
    raise CheckpointMismatchError(
        f'{source or "checkpoint"} is not a {family} checkpoint: it lacks '
        f'{absent}; its first keys are {list(sd)[:6]}.{hint} Load it into '
        'the matching backbone, or pass the right file.')


def rename_and_drop(state_dict: Dict[str, Tensor], rename, drop: Tuple[str, ...],
                    why: str, required, family: str, source: str = ''
                    ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """The converter of a family whose keys only need renaming: each key
    goes through ``rename``; the renamed dict must hold ``required`` (else a
    clear :func:`require_keys` error); renamed keys starting with ``drop``
    are dropped and reported with ``why``."""
    names = {key: rename(key) for key in state_dict}
    require_keys({names[k]: v for k, v in state_dict.items()}, required,
                 family, source)
    report = ConversionReport(source=source)
    out = {}
    for key, value in state_dict.items():
        if names[key].startswith(drop):
            report.dropped[key] = why
            continue
        out[names[key]] = value
        report.renamed[key] = names[key]
    return out, report


def load_converted(model, filename: str, convert, family: str,
                   download_hint: str, prefix: Optional[str] = None,
                   strict: bool = True, logger=None) -> ConversionReport:
    """Load ``filename`` into ``model`` through ``convert``.

    ``convert(checkpoint, model, prefix, source)`` returns the converted
    state dict and a report checked against the model. Shape mismatches
    always raise :class:`CheckpointMismatchError`; with ``strict`` so do
    unfilled or unplaceable keys. The report is logged.
    """
    import os.path as osp

    from mmengine.logging import MMLogger, print_log
    from mmengine.runner import CheckpointLoader
    if '://' not in str(filename) and not osp.isfile(filename):
        raise FileNotFoundError(
            f'{family} pretrained checkpoint {filename!r} does not exist. '
            f'Download {download_hint} to that path, point '
            'model.backbone.init_cfg.checkpoint at your copy, or set '
            'model.backbone.init_cfg=None to train from scratch.')
    checkpoint = CheckpointLoader.load_checkpoint(filename,
                                                  map_location='cpu')
    converted, report = convert(checkpoint, model, prefix, str(filename))
    if report.mismatched or (strict and not report.ok):
        raise CheckpointMismatchError(
            report.summary() + f'\nThe checkpoint does not fit this '
            f'{family} (check the arch and sizes against the file; '
            "init_cfg=dict(..., strict=False) loads what fits and warns).")
    model.load_state_dict(converted, strict=False)
    logger = logger or MMLogger.get_current_instance()
    print_log(report.summary(), logger=logger,
              level=30 if not report.ok else 20)
    return report


def convert_for_model(checkpoint: dict, model, prefix: Optional[str],
                      source: str, convert, probe: str
                      ) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Unwrap ``checkpoint``, run ``convert(state_dict, source)`` and check
    the result against ``model``. Dense output norms (``outnorm*``) that a
    classification file cannot have are reported as initialised, not as
    missing."""
    sd, _ = extract_state_dict(checkpoint)
    sd, outside = select_prefix(sd, prefix, probe)
    converted, report = convert(sd, source)
    report.dropped.update(outside)
    check_against_model(report, converted, model.state_dict())
    fresh = [k for k in report.missing if k.startswith('outnorm')]
    if fresh:
        report.missing = [k for k in report.missing if k not in fresh]
        report.transformed['outnorm*'] = (
            'initialised (dense output norms, not in a classification '
            f'checkpoint): {", ".join(fresh)}')
    return converted, report


def convert_file(src: str, dst: str, convert, probe: str, arch: str,
                 **meta) -> ConversionReport:
    """Offline conversion of a release file to backbone weights under
    'state_dict' (with meta['mmvim'] = arch, source and ``meta``) that the
    backbone loads directly."""
    import torch
    from mmengine.runner import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(src, map_location='cpu')
    sd, _ = extract_state_dict(checkpoint)
    sd, outside = select_prefix(sd, None, probe)
    converted, report = convert(sd, src)
    report.dropped.update(outside)
    torch.save(dict(state_dict=converted,
                    meta=dict(mmvim=dict(arch=arch, source=src, **meta))),
               dst)
    return report
