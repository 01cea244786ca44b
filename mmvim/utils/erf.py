"""Effective receptive field (ERF) of a backbone output, as in RepLKNet
(Ding et al., CVPR 2022, ``erf/visualize_erf.py`` / ``analyze_erf.py``) and
the VMamba paper's ERF figures (``analyze/utils.py``, the same method).

For a batch of images ``x`` (B, 3, H, W) and one backbone output
``out`` (B, C, h, w), the contribution of every input pixel to the centre of
the output is::

    score = relu(out[:, :, h // 2, w // 2]).sum()        # a scalar
    g     = relu(d score / d x)                          # (B, 3, H, W)
    map  += g.sum(dim=(0, 1))                            # (H, W)

averaged over all images (:func:`compute_erf`). The scores differ by orders
of magnitude, so the map is shown compressed and rescaled to [0, 1]
(:func:`erf_heatmap`): RepLKNet uses ``log10(map + 1) / max`` ('log', the
default here), VMamba's code ``map ** 0.25 / max`` ('root'). The spread is
summarised by RepLKNet's "high-contribution area ratio": the area of the
smallest square around the centre that holds more than ``t`` of the total
(scaled) contribution, as a fraction of the image, for t = 20%, 30%, 50%,
99% (:func:`area_ratios`). A small ratio means the output looks at a small
neighbourhood; a ratio near ``t`` means the contribution is spread evenly
over the image.

Note that ``log10(x + 1)`` is nearly linear for x << 1: the log scale
compresses only maps whose values reach ~1 and more (large inputs, trained
networks), so ratios of small-valued maps equal the raw ones.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Dict, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['compute_erf', 'erf_heatmap', 'area_ratios', 'save_erf_png',
           'DEFAULT_THRESHOLDS', 'SCALES']

# RepLKNet's analyze_erf.py reports these.
DEFAULT_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
# display compressions: RepLKNet's, VMamba's (``simpnorm``), none
SCALES = ('log', 'root', 'raw')

Images = Union[Tensor, Iterable[Tensor]]


def _batches(images: Images, batch_size: int) -> Iterator[Tensor]:
    """(N, C, H, W) tensor -> chunks of ``batch_size``; an iterable of
    (B, C, H, W) or (C, H, W) tensors -> those, batched as given."""
    if isinstance(images, Tensor):
        if images.dim() == 3:
            images = images[None]
        yield from images.split(batch_size)
        return
    for batch in images:
        yield batch[None] if batch.dim() == 3 else batch


def _select_output(outs, out_index: int) -> Tensor:
    if isinstance(outs, Tensor):
        outs = (outs, )
    if isinstance(outs, dict):  # e.g. a timm-style features dict
        outs = tuple(outs.values())
    outs = tuple(outs)
    if not -len(outs) <= out_index < len(outs):
        raise IndexError(f'out_index {out_index} out of range: the backbone '
                         f'returned {len(outs)} outputs')
    out = outs[out_index]
    if not isinstance(out, Tensor) or out.dim() != 4:
        raise ValueError('the ERF needs an NCHW feature map; output '
                         f'{out_index} is {type(out).__name__} of shape '
                         f'{getattr(out, "shape", None)}')
    return out


@contextlib.contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the duration (only the input's
    gradient is wanted, and weight gradients would cost time)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def compute_erf(backbone: nn.Module, images: Images, out_index: int = -1,
                batch_size: int = 1,
                device: Union[str, torch.device, None] = None) -> np.ndarray:
    """Mean contribution of every input pixel to the centre of an output.

    Args:
        backbone: returns a tuple/list of NCHW maps (or one NCHW tensor).
            It is put in eval mode (BN running statistics, no drop path)
            for the call and restored afterwards.
        images: normalised images, a (N, C, H, W) tensor (or one (C, H, W)
            image) or an iterable of (B, C, H, W) / (C, H, W) tensors, all
            of the same H x W.
        out_index: which output to take (negative counts from the end).
        batch_size: images per forward pass when ``images`` is a tensor.
        device: where to run (default: the backbone's device).

    Returns:
        float64 array (H, W): sum over channels of relu(d centre / d input),
        averaged over the images (not normalised). Images whose gradient
        is not finite are skipped with a warning, as RepLKNet does.
    """
    if device is None:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else 'cpu'
    total: Optional[Tensor] = None
    count = skipped = 0
    was_training = backbone.training
    backbone.eval()
    try:
        with _no_param_grads(backbone), torch.enable_grad():
            for batch in _batches(images, batch_size):
                x = batch.to(device=device, dtype=torch.float32)
                x = x.detach().requires_grad_(True)
                out = _select_output(backbone(x), out_index)
                h, w = out.shape[-2:]
                centre = F.relu(out[:, :, h // 2, w // 2]).sum()
                if not centre.requires_grad:  # relu(.) == 0 everywhere
                    grad = torch.zeros_like(x)
                else:
                    grad, = torch.autograd.grad(centre, x)
                contribution = F.relu(grad).sum(dim=(0, 1)).double().cpu()
                if total is not None and contribution.shape != total.shape:
                    raise ValueError(
                        'all images must have the same size; got '
                        f'{tuple(contribution.shape)} after '
                        f'{tuple(total.shape)}')
                if not torch.isfinite(contribution).all():
                    skipped += x.shape[0]
                    continue
                total = contribution if total is None else total + \
                    contribution
                count += x.shape[0]
    finally:
        backbone.train(was_training)
    if skipped:
        warnings.warn(f'compute_erf: skipped {skipped} image(s) with a '
                      'non-finite gradient', stacklevel=2)
    if total is None:
        raise ValueError('compute_erf: no image with a finite gradient '
                         '(or no images at all)')
    return (total / count).numpy()


def erf_heatmap(erf: Union[np.ndarray, Tensor],
                scale: str = 'log') -> np.ndarray:
    """The map compressed and rescaled to [0, 1] for display: 'log' is
    RepLKNet's ``log10(erf + 1) / max``, 'root' VMamba's ``erf ** 0.25 /
    max``, 'raw' ``erf / max``. (H, W) -> (H, W) float64 (all zeros if
    ``erf`` is all zeros)."""
    data = np.asarray(erf, dtype=np.float64)
    if scale == 'log':
        data = np.log10(data + 1.0)
    elif scale == 'root':
        data = np.power(data, 0.25)
    elif scale != 'raw':
        raise ValueError(f'scale must be one of {SCALES}, got {scale!r}')
    peak = float(data.max()) if data.size else 0.0
    return data / peak if peak > 0 else np.zeros_like(data)


def _square_sums(data: np.ndarray) -> Sequence[tuple]:
    """(side_h, side_w, sum) of the squares of half-size r = 0, 1, ...
    around (H // 2, W // 2), clipped to the image, until they cover it."""
    h, w = data.shape
    ch, cw = h // 2, w // 2
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = data.cumsum(0).cumsum(1)
    rows = []
    for r in range(max(ch, h - 1 - ch, cw, w - 1 - cw) + 1):
        t, b = max(ch - r, 0), min(ch + r + 1, h)
        left, right = max(cw - r, 0), min(cw + r + 1, w)
        total = integral[b, right] - integral[t, right] - \
            integral[b, left] + integral[t, left]
        rows.append((b - t, right - left, total))
    return rows


def area_ratios(erf: Union[np.ndarray, Tensor],
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                scale: str = 'log') -> Dict[float, float]:
    """RepLKNet's high-contribution area ratio.

    For each threshold ``t``: the area of the smallest square centred on
    (H // 2, W // 2) (sides 1, 3, 5, ..., clipped at the image border) whose
    contribution exceeds ``t`` of the total, divided by H * W.

    Args:
        erf: (H, W) map from :func:`compute_erf`.
        thresholds: fractions in (0, 1].
        scale: measured on :func:`erf_heatmap` with this scale; 'log' as
            RepLKNet's ``analyze_erf.py``. 'raw' (the map itself) gives
            smaller ratios when a few pixels dominate.

    Returns:
        {t: ratio in (0, 1]}; nan for every t if the map is all zeros.
        (RepLKNet starts at a 3 x 3 square and gives up before covering the
        image; here 1 x 1 up to the whole image are tried, so a value
        always exists.)
    """
    data = erf_heatmap(erf, scale)
    total = float(data.sum())
    if not total > 0:
        return {t: math.nan for t in thresholds}
    rows = _square_sums(data)
    h, w = data.shape
    result = {}
    for t in thresholds:
        for side_h, side_w, part in rows:
            # '>' as RepLKNet; the full image always reaches t <= 1
            if part / total > t or (side_h == h and side_w == w):
                result[t] = side_h * side_w / (h * w)
                break
    return result


def save_erf_png(erf: Union[np.ndarray, Tensor], path: str,
                 title: Optional[str] = None, scale: str = 'log',
                 dpi: int = 60, cmap: str = 'RdYlGn') -> str:
    """Save :func:`erf_heatmap` of ``erf`` (H, W) (with ``scale``) as a
    PNG with the 20%/50%/99% area ratios under the title; returns
    ``path``.

    Drawn with matplotlib on an Agg canvas (no display needed), in
    RepLKNet's 'RdYlGn' colour map with a 0-1 colour bar.
    """
    import os

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = erf_heatmap(erf, scale)
    ratios = area_ratios(erf, (0.2, 0.5, 0.99), scale)
    fig = Figure(figsize=(6, 5.6), dpi=dpi)
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap=matplotlib.colormaps[cmap], vmin=0, vmax=1,
                      interpolation='antialiased')
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    summary = f'{scale} scale; area ratio ' + ', '.join(
        f'{int(t * 100)}%: {r:.3f}' for t, r in ratios.items())
    ax.set_title(f'{title}\n{summary}' if title else summary, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
