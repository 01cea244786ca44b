"""mmseg's and mmdet's inferencers for mmvim models.

``mmseg.apis.MMSegInferencer`` and ``mmdet.apis.DetInferencer`` already run
mmvim configs: given a config file (its ``custom_imports`` registers mmvim)
or, once mmvim is imported or installed, an ``mmvim::configs/...`` name
(:mod:`mmvim.config_names`), and a checkpoint trained with mmvim. Three
things they do not do, which the subclasses here add:

* an official dense release (VMamba / MambaVision UperNet, Mask R-CNN, ...)
  names its backbone differently: it is converted on load, and every key
  must fit (:func:`mmvim.checkpoint.dense.load_model_checkpoint`), where the
  stock loader would skip what does not fit and predict with random weights;
* a checkpoint without ``meta['dataset_meta']`` (an official release, a
  freshly initialised model) gets the class names and palette of the
  config's test dataset, where the stock ones fall back to Cityscapes / COCO;
* a folder is read for its images only (mmseg's inferencer feeds every
  file to the pipeline), and a file or folder without images is one clear
  :class:`InferenceInputError`, before the model runs.

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
import os
import os.path as osp
import warnings
from typing import List, Optional, Tuple, Union

import numpy as np
from mmdet.apis import DetInferencer
from mmdet.apis.det_inferencer import IMG_EXTENSIONS
from mmengine.config import Config, ConfigDict
from mmseg.apis import MMSegInferencer
from torch import nn

from ..checkpoint.dense import load_model_checkpoint
from ..utils import load_config

__all__ = ['MMVimSegInferencer', 'MMVimDetInferencer', 'build_inferencer',
           'config_dataset_meta', 'list_image_inputs', 'InferenceInputError']

ConfigLike = Union[str, Config, ConfigDict, dict]


def _as_config(model: Optional[ConfigLike]):
    """A config file or ``mmvim::`` name -> Config (checked, with
    ``custom_imports``); anything else is passed on unchanged."""
    return load_config(model) if isinstance(model, str) else model


class InferenceInputError(ValueError):
    """An input that holds no image to predict on (one line: the path,
    what is wrong, what to give instead)."""


def _readable_image(path: str) -> bool:
    """An image file by name (one of mmdet's ``IMG_EXTENSIONS``, any case)
    and by content (OpenCV, which decodes it, recognises its header)."""
    import cv2
    return path.lower().endswith(IMG_EXTENSIONS) and \
        cv2.haveImageReader(path)


def _examples(names: List[str], n: int = 3) -> str:
    more = f', ... ({len(names)} in all)' if len(names) > n else ''
    return ', '.join(names[:n]) + more


def list_image_inputs(path: str) -> Tuple[List[str], List[str]]:
    """The images to predict on for a local file or folder: ``(images,
    skipped)``, sorted paths. A folder gives the image files directly in
    it (not in subfolders, as mmseg's / mmdet's inferencers read folders);
    ``skipped`` are its other files. Raises :class:`InferenceInputError`
    for a missing path, a file that is not an image, or a folder without
    images."""
    kinds = '/'.join(e.lstrip('.') for e in IMG_EXTENSIONS)
    if osp.isfile(path):
        if not _readable_image(path):
            raise InferenceInputError(
                f'{path} is not an image ({kinds} that OpenCV can read); '
                'give an image file or a folder of images.')
        return [path], []
    if not osp.isdir(path):
        raise InferenceInputError(f'input {path!r} does not exist.')
    entries = sorted(os.listdir(path))
    files = [osp.join(path, e) for e in entries
             if osp.isfile(osp.join(path, e))]
    images = [f for f in files if _readable_image(f)]
    if images:
        return images, [f for f in files if f not in images]
    what = []
    if files:
        what.append(f'{len(files)} other files: '
                    f'{_examples([osp.basename(f) for f in files])}')
    subdirs = [e for e in entries if osp.isdir(osp.join(path, e))]
    if subdirs:
        what.append(f'subfolders {_examples(subdirs)}: pass one of them')
    found = f' ({"; ".join(what)})' if what else ' (it is empty)'
    raise InferenceInputError(
        f'no images in folder {path}{found}; give an image file or a '
        f'folder of {kinds} images.')


def _local_inputs(inputs, what: str):
    """``_inputs_to_list`` for a local file or folder: its images (the
    other files of a folder skipped with a warning); anything else (a
    list, an array, a URL) unchanged."""
    if not isinstance(inputs, str) or '://' in inputs:
        return inputs
    images, skipped = list_image_inputs(inputs)
    if skipped:
        warnings.warn(f'{what}: skipped {len(skipped)} files of {inputs} '
                      'that are not images: '
                      f'{_examples([osp.basename(f) for f in skipped])}',
                      stacklevel=3)
    return images


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
                  weights: Optional[str],
                  keys: Optional[Tuple[str, ...]] = None) -> str:
    """Weights through mmvim's converter (strict), then ``dataset_meta``:
    the checkpoint's (keys lower-cased; only ``keys`` when given), else the
    config's test dataset's. Returns where the class names came from:
    ``'checkpoint'`` or ``'config'``."""
    meta = {}
    if checkpoint is None:
        # (an exported model, mmvim.deploy.ONNXSegmentor, holds its weights)
        if getattr(model, 'onnx_file', None) is None:
            warnings.warn('no weights given: the predictions come from a '
                          'randomly initialised model.', stacklevel=3)
    else:
        load_model_checkpoint(model, weights or 'checkpoint', strict=True,
                              checkpoint=checkpoint)
        ckpt_meta = checkpoint.get('meta') or {}
        meta = {k.lower(): copy.deepcopy(v) for k, v in
                (ckpt_meta.get('dataset_meta') or {}).items()
                if keys is None or k.lower() in keys}
    if meta.get('classes'):
        model.dataset_meta = meta
        return 'checkpoint'
    model.dataset_meta = config_dataset_meta(cfg)
    return 'config'


class MMVimSegInferencer(MMSegInferencer):
    """``MMSegInferencer`` that converts official release checkpoints,
    loads strictly and takes class names from the config when the
    checkpoint has none.

    The classes and palette of a checkpoint's ``dataset_meta`` are used
    (a training run also stores ``label_map``, ``reduce_zero_label``, ...,
    which mmseg's visualizer does not take); ``classes_from`` says where the
    class names came from (``'checkpoint'`` or ``'config'``). A file or
    folder input gives its images only (:func:`list_image_inputs`).

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
        # mmseg's visualizer takes only these two (a training run's
        # dataset_meta also holds label_map, reduce_zero_label, ...)
        self.classes_from = _load_weights(model, checkpoint, cfg,
                                          self._weights_file,
                                          keys=('classes', 'palette'))
        meta = model.dataset_meta
        if len(meta.get('palette') or ()) != len(meta['classes']):
            palette = config_dataset_meta(cfg).get('palette')
            if len(palette or ()) != len(meta['classes']):
                # mmseg's BaseSegDataset's colours for a dataset without any
                state = np.random.get_state()
                np.random.seed(42)
                palette = np.random.randint(
                    0, 255, size=(len(meta['classes']), 3)).tolist()
                np.random.set_state(state)
            meta['palette'] = palette

    def _inputs_to_list(self, inputs) -> list:
        return super()._inputs_to_list(
            _local_inputs(inputs, type(self).__name__))


class MMVimDetInferencer(DetInferencer):
    """``DetInferencer`` that converts official release checkpoints,
    loads strictly and takes class names from the config when the
    checkpoint has none (a checkpoint's whole ``dataset_meta`` is kept, as
    ``DetInferencer`` does).

    Args:
        model: a config file, an ``mmvim::configs/...`` name, or a Config.
        weights: the checkpoint (mmvim's own or an official dense release).
        Other arguments as ``DetInferencer``.

    ``classes_from`` says where the class names came from
    (``'checkpoint'`` or ``'config'``). A file or folder input gives its
    images only (:func:`list_image_inputs`).
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
        self.classes_from = _load_weights(model, checkpoint, cfg,
                                          self._weights_file)
        # palette priority as DetInferencer's: argument, config, checkpoint
        palette = self.palette if self.palette != 'none' else \
            config_dataset_meta(cfg).get('palette')
        if palette is not None:
            model.dataset_meta['palette'] = palette
        model.dataset_meta.setdefault('palette', 'random')

    def _inputs_to_list(self, inputs) -> list:
        return super()._inputs_to_list(
            _local_inputs(inputs, type(self).__name__))


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
