"""Evaluate and infer with an exported ``.onnx`` segmentor through mmseg.

``ONNXSegmentor`` is mmseg's ``EncoderDecoder`` whose ``encode_decode``
runs the exported file in onnxruntime (the file's I/O contract is that
method's, see :mod:`mmvim.deploy.export`). Everything else is mmseg's own
code, unchanged: the config's data preprocessor, whole-image or sliding-
window inference, removing the padding, the resize to the original image,
the argmax, the dataset's metric and the visualizer. So::

    python tools/test.py CONFIG FILE.onnx
    python tools/infer.py CONFIG FILE.onnx IMAGES --backend onnxruntime

evaluate and draw with the file exactly as they do with a checkpoint
(:func:`onnx_model_config` swaps the config's model). onnxruntime is
imported when the first batch runs.
"""
from __future__ import annotations

import os.path as osp
from types import SimpleNamespace
from typing import List, Optional

import numpy as np
import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from torch import Tensor

from ..registry import register_model

__all__ = ['ONNXSegmentor', 'onnx_model_config']


@register_model()
class ONNXSegmentor(EncoderDecoder):
    """An exported segmentor (``onnx_file``) in mmseg's inference pipeline.

    Args:
        onnx_file: the file written by tools/deploy/export_onnx.py.
        num_classes, out_channels, threshold, align_corners: the decode
            head's settings (for mmseg's post-processing).
        data_preprocessor, test_cfg: the original model's.
        threads: onnxruntime intra-op threads (default: its own choice).
    """

    def __init__(self, onnx_file: str, num_classes: int,
                 data_preprocessor: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 out_channels: Optional[int] = None,
                 threshold: Optional[float] = None,
                 align_corners: bool = False,
                 threads: Optional[int] = None,
                 init_cfg: Optional[dict] = None) -> None:
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor,
                               init_cfg=init_cfg)
        self.onnx_file = onnx_file
        self.num_classes = num_classes
        self.out_channels = out_channels or num_classes
        self.align_corners = align_corners
        self.test_cfg = test_cfg if test_cfg is not None else \
            dict(mode='whole')
        self.train_cfg = None
        self.threads = threads
        # what mmseg's post-processing reads from the decode head
        self.decode_head = SimpleNamespace(
            num_classes=num_classes, out_channels=self.out_channels,
            threshold=0.3 if threshold is None else threshold,
            align_corners=align_corners)
        self._session = None

    @property
    def session(self):
        if self._session is None:
            from .export import onnx_session
            self._session = onnx_session(self.onnx_file, self.threads)
        return self._session

    def encode_decode(self, inputs: Tensor,
                      batch_img_metas: List[dict]) -> Tensor:
        """Seg logits (N, C, H, W) of the batch, from onnxruntime."""
        spec = self.session.get_inputs()[0]
        want = spec.shape  # ints for static dimensions
        got = tuple(inputs.shape)
        for i in (1, 2, 3):  # channels, height, width
            if isinstance(want[i], int) and want[i] != got[i]:
                raise ValueError(
                    f'{osp.basename(self.onnx_file)} takes inputs of shape '
                    f'{tuple(want)}, this test pipeline gives {got}; '
                    'export with --shape matching the pipeline\'s input '
                    'size (the crop size in slide mode) or with --dynamic.')
        batches = [inputs] if not isinstance(want[0], int) or \
            want[0] == got[0] else inputs.split(want[0])
        from .export import run_onnx
        outs = [run_onnx(self.session, b)[0] for b in batches]
        return torch.from_numpy(np.concatenate(outs)).to(inputs.device)

    def extract_feat(self, inputs: Tensor):
        raise NotImplementedError(
            f'{type(self).__name__} runs an exported model: inference only')

    def loss(self, inputs, data_samples):
        raise NotImplementedError(
            f'{type(self).__name__} runs an exported model: inference only '
            '(train with the original config and export again)')

    def _forward(self, inputs, data_samples=None):
        return self.encode_decode(inputs, [])


def onnx_model_config(cfg, onnx_file: str,
                      threads: Optional[int] = None) -> None:
    """In place: ``cfg.model`` becomes an :class:`ONNXSegmentor` running
    ``onnx_file`` with the config's data preprocessor and test settings.
    Raises ``MMVimConfigError`` for a config that is not a segmentor's, or
    for a file exported with ``--scan-op mmvim`` when mmvim's custom-op
    library is not built."""
    from ..utils import MMVimConfigError
    from .ort_ops import CustomOpLibraryError, check_library
    try:
        check_library(onnx_file)
    except CustomOpLibraryError as err:
        raise MMVimConfigError(str(err)) from None
    model = cfg.model
    head = model.get('decode_head')
    if cfg.get('default_scope') != 'mmseg' or head is None:
        raise MMVimConfigError(
            f'{onnx_file}: only segmentors (mmseg EncoderDecoder configs) '
            'are evaluated from an .onnx file; a detector\'s file holds its '
            'backbone and neck only (docs/deploy.md).')
    if isinstance(head, (list, tuple)):  # cascade decode heads: the last
        head = head[-1]
    if 'num_classes' not in head:
        raise MMVimConfigError(f'{onnx_file}: the config\'s decode_head has '
                               'no num_classes')
    cfg.model = dict(
        type='ONNXSegmentor', onnx_file=onnx_file,
        num_classes=head['num_classes'],
        out_channels=head.get('out_channels'),
        threshold=head.get('threshold'),
        align_corners=head.get('align_corners', False),
        data_preprocessor=model.get('data_preprocessor'),
        test_cfg=model.get('test_cfg'), threads=threads)
    imports = list(cfg.get('custom_imports', {}).get('imports', []))
    if 'mmvim.deploy' not in imports:
        cfg.custom_imports = dict(imports=imports + ['mmvim.deploy'],
                                  allow_failed_imports=False)
