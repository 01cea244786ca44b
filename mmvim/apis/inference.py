"""mmseg's and mmdet's inferencers for mmvim models.

``mmseg.apis.MMSegInferencer`` and ``mmdet.apis.DetInferencer`` already run
mmvim configs: given a config file (its ``custom_imports`` registers mmvim)
or, once mmvim is imported or installed, an ``mmvim::configs/...`` name
(:mod:`mmvim.config_names`), and a checkpoint trained with mmvim. Two things
they do not do, which the subclasses here add:

* an official dense release (VMamba / MambaVision UperNet, Mask R-CNN, ...)
  names its backbone differently: it is converted on load, and every key
  must fit (:func:`mmvim.checkpoint.dense.load_model_checkpoint`), where the
  stock loader would skip what does not fit and predict with random weights;
* a checkpoint without ``meta['dataset_meta']`` (an official release, a
  freshly initialised model) gets the class names and palette of the
  config's test dataset, where the stock ones fall back to Cityscapes / COCO.

:func:`build_inferencer` picks the one the config's ``default_scope`` asks
for::

    from mmvim.apis import build_inferencer
    inferencer = build_inferencer('mmvim::configs/upernet_vim_ti_ade20k.py',
                                  'upernet_vim_ti.pth', device='cpu')
    result = inferencer('demo.jpg', out_dir='outputs')
    result['predictions']        # per image: a label map (H, W) / a dict
"""
from __future__ import annotations

import copy
import importlib
import warnings
from typing import Optional, Union

from mmdet.apis import DetInferencer
from mmengine.config import Config, ConfigDict
from mmseg.apis import MMSegInferencer
from torch import nn

from ..checkpoint.dense import load_model_checkpoint
from ..utils import load_config

__all__ = ['MMVimSegInferencer', 'MMVimDetInferencer', 'build_inferencer',
           'config_dataset_meta']

ConfigLike = Union[str, Config, ConfigDict, dict]


def _as_config(model: Optional[ConfigLike]):
    """A config file or ``mmvim::`` name -> Config (checked, with
    ``custom_imports``); anything else is passed on unchanged."""
    return load_config(model) if isinstance(model, str) else model


def config_dataset_meta(cfg: ConfigLike) -> dict:
    """The ``classes`` / ``palette`` of the config's test dataset (its class
    defaults plus the config's ``metainfo``), without reading the data."""
    from ..utils import model_registry
    cfg = _as_config(cfg)
    model_registry(cfg)  # registers the toolbox's modules
    scope = cfg.get('default_scope', 'mmseg')
    datasets = importlib.import_module(f'{scope}.registry').DATASETS
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True
    meta = datasets.build(dataset_cfg).metainfo
    return {k: copy.deepcopy(meta[k]) for k in ('classes', 'palette')
            if meta.get(k) is not None}


def _load_weights(model: nn.Module, checkpoint: Optional[dict], cfg,
                  weights: Optional[str]) -> None:
    """Weights through mmvim's converter (strict), then ``dataset_meta``:
    the checkpoint's, else the config's test dataset's."""
    meta = None
    if checkpoint is None:
        # (an exported model, mmvim.deploy.ONNXSegmentor, holds its weights)
        if getattr(model, 'onnx_file', None) is None:
            warnings.warn('no weights given: the predictions come from a '
                          'randomly initialised model.', stacklevel=3)
    else:
        load_model_checkpoint(model, weights or 'checkpoint', strict=True,
                              checkpoint=checkpoint)
        ckpt_meta = checkpoint.get('meta') or {}
        if ckpt_meta.get('dataset_meta'):
            # names and colours only: the visualizers take nothing else (a
            # checkpoint saved by training also holds label_map, ...)
            meta = {k.lower(): v for k, v in
                    ckpt_meta['dataset_meta'].items()
                    if k.lower() in ('classes', 'palette')}
    if not meta or not meta.get('classes'):
        meta = config_dataset_meta(cfg)
    model.dataset_meta = meta


class MMVimSegInferencer(MMSegInferencer):
    """``MMSegInferencer`` that converts official release checkpoints,
    loads strictly and takes class names from the config when the
    checkpoint has none.

    Args:
        model: a config file, an ``mmvim::configs/...`` name, or a Config.
        weights: the checkpoint (mmvim's own or an official dense release).
        Other arguments as ``MMSegInferencer``.
    """

    def __init__(self, model: ConfigLike, weights: Optional[str] = None,
                 classes=None, palette=None, dataset_name=None,
                 device: Optional[str] = None,
                 scope: Optional[str] = 'mmseg') -> None:
        self._weights_file = weights
        super().__init__(_as_config(model), weights, classes=classes,
                         palette=palette, dataset_name=dataset_name,
                         device=device, scope=scope)
        if classes is None and palette is None and dataset_name is None:
            # the stock one shows Cityscapes' until the first drawing
            self.visualizer.set_dataset_meta(**self.model.dataset_meta)

    def _load_weights_to_model(self, model, checkpoint, cfg) -> None:
        _load_weights(model, checkpoint, cfg, self._weights_file)


class MMVimDetInferencer(DetInferencer):
    """``DetInferencer`` that converts official release checkpoints,
    loads strictly and takes class names from the config when the
    checkpoint has none.

    Args:
        model: a config file, an ``mmvim::configs/...`` name, or a Config.
        weights: the checkpoint (mmvim's own or an official dense release).
        Other arguments as ``DetInferencer``.
    """

    def __init__(self, model: ConfigLike, weights: Optional[str] = None,
                 device: Optional[str] = None,
                 scope: Optional[str] = 'mmdet', palette: str = 'none',
                 show_progress: bool = True) -> None:
        self._weights_file = weights
        super().__init__(_as_config(model), weights, device=device,
                         scope=scope, palette=palette,
                         show_progress=show_progress)

    def _load_weights_to_model(self, model, checkpoint, cfg) -> None:
        _load_weights(model, checkpoint, cfg, self._weights_file)
        # palette priority as DetInferencer's: argument, config, checkpoint
        palette = self.palette if self.palette != 'none' else \
            config_dataset_meta(cfg).get('palette')
        if palette is not None:
            model.dataset_meta['palette'] = palette
        model.dataset_meta.setdefault('palette', 'random')


def build_inferencer(model: ConfigLike, weights: Optional[str] = None,
                     device: Optional[str] = None, **kwargs):
    """The inferencer for ``model``'s ``default_scope``:
    :class:`MMVimSegInferencer` (mmseg) or :class:`MMVimDetInferencer`
    (mmdet). ``kwargs`` go to its constructor."""
    cfg = _as_config(model)
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        return MMVimDetInferencer(cfg, weights, device=device, **kwargs)
    if scope == 'mmseg':
        return MMVimSegInferencer(cfg, weights, device=device, **kwargs)
    raise ValueError(f"config's default_scope is {scope!r}; mmvim's "
                     "inferencers need 'mmseg' or 'mmdet'.")
