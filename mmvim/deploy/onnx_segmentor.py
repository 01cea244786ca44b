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

__all__ = ['ONNXSegmentor', 'onnx_model_config', 'OnnxFile']


class OnnxFile:
    """For a model that runs an exported file (``self.onnx_file``,
    ``self.threads``): its onnxruntime session, made at the first batch,
    and the check of a batch against the file's static dimensions."""

    _session = None

    @property
    def session(self):
        if self._session is None:
            from .export import onnx_session
            self._session = onnx_session(self.onnx_file, self.threads)
        return self._session

    def batch_step(self, inputs: Tensor, size_hint: str) -> int:
        """How many images of ``inputs`` (N, 3, H, W) one run of the file
        takes: its static batch size, else all of them. ValueError (one
        line, ending with ``size_hint``) when the file's static channels,
        height or width differ from the batch's."""
        want = self.session.get_inputs()[0].shape  # ints where static
        got = tuple(inputs.shape)
        for i in (1, 2, 3):  # channels, height, width
            if isinstance(want[i], int) and want[i] != got[i]:
                raise ValueError(
                    f'{osp.basename(self.onnx_file)} takes inputs of shape '
                    f'{tuple(want)}, this test pipeline gives {got}; '
                    f'export with --shape matching {size_hint} or with '
                    '--dynamic.')
        return want[0] if isinstance(want[0], int) else got[0]


@register_model()
class ONNXSegmentor(OnnxFile, EncoderDecoder):
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

    def encode_decode(self, inputs: Tensor,
                      batch_img_metas: List[dict]) -> Tensor:
        """Seg logits (N, C, H, W) of the batch, from onnxruntime."""
        batches = inputs.split(self.batch_step(
            inputs, 'the pipeline\'s input size (the crop size in slide '
            'mode)'))
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
    ``onnx_file`` with the config's data preprocessor and test settings
    (for an mmdet config an :class:`~mmvim.deploy.ONNXDetector`, see
    :func:`~mmvim.deploy.onnx_detector.onnx_detector_config`). Raises
    ``MMVimConfigError`` for a config that is neither, or for a file
    exported with ``--scan-op mmvim`` when mmvim's custom-op library is not
    built."""
    from ..utils import MMVimConfigError
    if cfg.get('default_scope') == 'mmdet':
        from .onnx_detector import onnx_detector_config
        return onnx_detector_config(cfg, onnx_file, threads)
    model = cfg.model
    head = model.get('decode_head')
    if cfg.get('default_scope') != 'mmseg' or head is None:
        raise MMVimConfigError(
            f'{onnx_file}: only segmentors (mmseg EncoderDecoder configs) '
            'and two-stage detectors are evaluated from an .onnx file '
            '(docs/deploy.md).')
    if isinstance(head, (list, tuple)):  # cascade decode heads: the last
        head = head[-1]
    check_onnx_inputs(onnx_file, ['inputs'], 'segmentor')
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
    import_deploy(cfg)


def import_deploy(cfg) -> None:
    """In place: the config imports ``mmvim.deploy`` (which registers the
    ONNX models) when it is built."""
    imports = list(cfg.get('custom_imports', {}).get('imports', []))
    if 'mmvim.deploy' not in imports:
        cfg.custom_imports = dict(imports=imports + ['mmvim.deploy'],
                                  allow_failed_imports=False)


def check_onnx_inputs(onnx_file: str, want: List[str], kind: str) -> None:
    """Raise ``MMVimConfigError`` (one line) unless ``onnx_file`` is an ONNX
    model whose inputs are ``want`` (what tools/deploy/export_onnx.py
    writes for a ``kind``) and, when it was exported with ``--scan-op
    mmvim``, mmvim's custom-op library is built."""
    from ..utils import MMVimConfigError
    from .export import DEPLOY_HINT
    from .ort_ops import CustomOpLibraryError, check_library
    try:
        import onnx
    except ImportError:
        raise MMVimConfigError(f'{onnx_file}: onnx is not installed: '
                               f'{DEPLOY_HINT}') from None
    try:
        model = onnx.load(onnx_file, load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends
        raise MMVimConfigError(
            f'{onnx_file} is not an ONNX model ({type(err).__name__}); '
            'write one with tools/deploy/export_onnx.py') from None
    try:
        check_library(model, osp.basename(onnx_file))
    except CustomOpLibraryError as err:
        raise MMVimConfigError(str(err)) from None
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in weights]
    if names != want:
        raise MMVimConfigError(
            f'{onnx_file} has inputs {names or "none"}, not those of a '
            f'{kind} exported by tools/deploy/export_onnx.py ({want}); '
            'export this config with it.')
