"""Evaluate and infer with an exported ``.onnx`` detector through mmdet.

``ONNXDetector`` is an mmdet detector whose ``predict`` runs the exported
file (:mod:`mmvim.deploy.det_graph`: inputs ``inputs``, ``img_shape``;
outputs ``dets``, ``labels``, ``masks``) in onnxruntime and then does what
mmdet does after its heads: the paste of each box-sized mask probability
into the original image and its threshold (``FCNMaskHead.predict_by_feat``
with the config's ``mask_thr_binary``; mmdet's own code) and the rescale of
the boxes to the original image (``scale_factor``). Everything else is
mmdet's: the config's data preprocessor, ``CocoMetric``, the visualizer.
So::

    python tools/test.py DET_CONFIG FILE.onnx
    python tools/infer.py DET_CONFIG FILE.onnx IMAGES --backend onnxruntime

evaluate and draw with the file as they do with a checkpoint
(:func:`onnx_detector_config` swaps the config's model).

:func:`compare_detections` is the check of a file against PyTorch (the
export tool's ``--verify`` and the tests): the same detections in the same
order, box and score errors, and the IoU of each instance's pasted mask.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.structures.bbox import scale_boxes
from mmengine.structures import InstanceData
from torch import Tensor

from ..registry import register_model
from .onnx_segmentor import OnnxFile

__all__ = ['ONNXDetector', 'onnx_detector_config', 'detections_to_instances',
           'compare_detections', 'same_detections', 'run_detector_onnx',
           'image_metas', 'verify_detector']


class _MaskPaste:
    """mmdet's ``FCNMaskHead`` post-processing (``predict_by_feat`` with
    ``activate_map=True``): paste each instance's (1, M, M) probabilities
    into the image by its box (``_do_paste_mask``: bilinear
    ``grid_sample``) and threshold them at ``mask_thr_binary``. The file's
    masks are already of the detection's class, hence ``class_agnostic``."""
    class_agnostic = True
    predict_by_feat = FCNMaskHead.predict_by_feat
    _predict_by_feat_single = FCNMaskHead._predict_by_feat_single


def detections_to_instances(dets: Tensor, labels: Tensor,
                            masks: Optional[Tensor], img_meta: dict,
                            mask_thr_binary: float = 0.5,
                            rescale: bool = True) -> InstanceData:
    """One image's outputs of an exported detector -> mmdet's
    ``pred_instances`` (bboxes, scores, labels, masks), as
    ``TwoStageDetector.predict(rescale)`` gives them.

    dets (K, 5), labels (K,) (-1: no detection), masks (K, M, M)
    probabilities or None. With ``rescale`` the boxes are divided by
    ``img_meta['scale_factor']`` and the masks pasted at ``ori_shape``
    (mmdet's ``FCNMaskHead`` code); without it, masks are pasted at
    ``img_shape``-sized ``ori_shape * scale_factor`` as mmdet does.
    """
    found = labels >= 0
    results = InstanceData(metainfo=img_meta)
    results.bboxes = dets[found, :4].clone()
    results.scores = dets[found, 4].clone()
    results.labels = labels[found].clone()
    if masks is None:
        if rescale and len(results) > 0:
            results.bboxes = scale_boxes(
                results.bboxes, [1 / s for s in img_meta['scale_factor']])
        return results
    from mmengine.config import ConfigDict
    cfg = ConfigDict(mask_thr_binary=mask_thr_binary)
    with warnings.catch_warnings():
        # mmdet copies the probabilities with Tensor.new_tensor (a
        # UserWarning per image)
        warnings.filterwarnings('ignore', message='To copy construct')
        return _MaskPaste().predict_by_feat(
            [masks[found][:, None]], [results], [img_meta], cfg,
            rescale=rescale, activate_map=True)[0]


def run_detector_onnx(session, inputs: Tensor,
                      img_shape: Tensor) -> List[np.ndarray]:
    """The outputs (dets, labels[, masks]) of an exported detector for one
    batch: ``inputs`` (N, 3, H, W), ``img_shape`` (N, 2) (h, w)."""
    names = [i.name for i in session.get_inputs()]
    feeds = {names[0]: inputs.detach().cpu().float().numpy(),
             names[1]: img_shape.detach().cpu().long().numpy()}
    return session.run(None, feeds)


@register_model()
class ONNXDetector(OnnxFile, BaseDetector):
    """An exported detector (``onnx_file``) in mmdet's inference pipeline
    (module docstring).

    Args:
        onnx_file: the file written by tools/deploy/export_onnx.py.
        data_preprocessor: the original model's.
        mask_thr_binary: the threshold of the pasted mask probabilities
            (the config's ``test_cfg.rcnn.mask_thr_binary``).
        threads: onnxruntime intra-op threads (default: its own choice).
    """

    def __init__(self, onnx_file: str,
                 data_preprocessor: Optional[dict] = None,
                 mask_thr_binary: float = 0.5,
                 threads: Optional[int] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.onnx_file = onnx_file
        self.mask_thr_binary = mask_thr_binary
        self.threads = threads

    def run(self, inputs: Tensor, img_shape: Tensor) -> List[Tensor]:
        """dets, labels[, masks] of the batch from onnxruntime (split into
        the file's static batch size where it has one)."""
        step = self.batch_step(inputs, 'the pipeline\'s padded input size')
        outs = [run_detector_onnx(self.session, inputs[i:i + step],
                                  img_shape[i:i + step])
                for i in range(0, inputs.shape[0], step)]
        return [torch.from_numpy(np.concatenate(parts)).to(inputs.device)
                for parts in zip(*outs)]

    def predict(self, batch_inputs: Tensor, batch_data_samples,
                rescale: bool = True):
        metas = [s.metainfo for s in batch_data_samples]
        img_shape = torch.tensor([list(m['img_shape'][:2]) for m in metas],
                                 dtype=torch.long)
        outs = self.run(batch_inputs, img_shape)
        masks = outs[2] if len(outs) > 2 else [None] * len(metas)
        results = [detections_to_instances(outs[0][i], outs[1][i], masks[i],
                                           meta, self.mask_thr_binary,
                                           rescale)
                   for i, meta in enumerate(metas)]
        return self.add_pred_to_datasample(batch_data_samples, results)

    def extract_feat(self, batch_inputs: Tensor):
        raise NotImplementedError(
            f'{type(self).__name__} runs an exported model: inference only')

    def loss(self, batch_inputs, batch_data_samples):
        raise NotImplementedError(
            f'{type(self).__name__} runs an exported model: inference only '
            '(train with the original config and export again)')

    def _forward(self, batch_inputs, batch_data_samples=None):
        metas = [s.metainfo for s in batch_data_samples or []]
        img_shape = torch.tensor([list(m['img_shape'][:2]) for m in metas],
                                 dtype=torch.long) if metas else \
            torch.tensor([list(batch_inputs.shape[2:])] *
                         batch_inputs.shape[0])
        return tuple(self.run(batch_inputs, img_shape))


def onnx_detector_config(cfg, onnx_file: str,
                         threads: Optional[int] = None) -> None:
    """In place: ``cfg.model`` becomes an :class:`ONNXDetector` running
    ``onnx_file`` with the config's data preprocessor and mask threshold.
    Raises ``MMVimConfigError`` for a config without a two-stage model."""
    from ..utils import MMVimConfigError
    model = cfg.model
    test_cfg = model.get('test_cfg') or {}
    if model.get('roi_head') is None or 'rcnn' not in test_cfg:
        raise MMVimConfigError(
            f'{onnx_file}: only two-stage detectors (Mask R-CNN, Cascade '
            'Mask R-CNN configs) are evaluated from an .onnx file.')
    from .det_graph import DET_INPUT_NAMES
    from .onnx_segmentor import check_onnx_inputs, import_deploy
    check_onnx_inputs(onnx_file, DET_INPUT_NAMES, 'detector')
    cfg.model = dict(
        type='ONNXDetector', onnx_file=onnx_file,
        data_preprocessor=model.get('data_preprocessor'),
        mask_thr_binary=test_cfg['rcnn'].get('mask_thr_binary', 0.5),
        threads=threads)
    import_deploy(cfg)


def _mask_iou(a: Tensor, b: Tensor) -> float:
    inter = (a & b).sum().item()
    union = (a | b).sum().item()
    return 1.0 if union == 0 else inter / union


def compare_detections(ref: InstanceData, out: InstanceData,
                       rtol: float = 1e-4) -> Dict[str, float]:
    """How ``out`` (e.g. from the .onnx file) agrees with ``ref`` (e.g.
    ``model.predict``), both one image's ``pred_instances`` (masks pasted).

    Detections pair up in order: out's i-th with the first unpaired ref
    detection of the same label whose score is within ``rtol`` of the
    largest score and whose box is within ``rtol`` of the largest
    coordinate. So the order must be ref's, except where scores are equal
    to that tolerance (two runtimes may order those either way). Returns
    the counts, ``paired`` (how many of out's detections found their
    partner), the worst box and score errors relative to those scales, and
    the lowest mask IoU of the pairs (1 without masks or pairs).
    """
    n_ref, n_out = len(ref), len(out)
    stats = dict(ref=n_ref, out=n_out, paired=0, box_error=0.0,
                 score_error=0.0, mask_iou=1.0)
    if n_ref == 0 or n_out == 0:
        return stats
    box_scale = max(ref.bboxes.abs().max().item(), 1e-12)
    score_scale = max(ref.scores.abs().max().item(), 1e-12)
    free = list(range(n_ref))
    for i in range(n_out):
        match = None
        for j in free:
            box = (ref.bboxes[j] - out.bboxes[i]).abs().max().item()
            score = abs(ref.scores[j].item() - out.scores[i].item())
            if ref.labels[j] == out.labels[i] and \
                    box <= rtol * box_scale and score <= rtol * score_scale:
                match = j
                break
            if ref.scores[j].item() < out.scores[i].item() - \
                    rtol * score_scale:
                break  # ref is sorted: no later partner
        if match is None:
            continue
        free.remove(match)
        stats['paired'] += 1
        stats['box_error'] = max(stats['box_error'], (
            ref.bboxes[match] - out.bboxes[i]).abs().max().item() / box_scale)
        stats['score_error'] = max(stats['score_error'], abs(
            ref.scores[match].item() - out.scores[i].item()) / score_scale)
        if 'masks' in ref and 'masks' in out:
            stats['mask_iou'] = min(stats['mask_iou'], _mask_iou(
                ref.masks[match].bool(), out.masks[i].bool()))
    return stats


def same_detections(stats: Dict[str, float], rtol: float = 1e-4,
                    mask_iou: float = 0.99) -> bool:
    """Whether :func:`compare_detections` found every detection of both
    sides paired, within ``rtol``, with masks of IoU at least
    ``mask_iou``."""
    return stats['ref'] == stats['out'] == stats['paired'] and \
        stats['box_error'] <= rtol and stats['score_error'] <= rtol and \
        stats['mask_iou'] >= mask_iou


def image_metas(img_shape: Sequence[Sequence[int]],
                pad_shape: Sequence[int]) -> List[dict]:
    """mmdet's meta info for a batch fed as is (no resize): each image's
    ``img_shape`` (h, w) inside the padded ``pad_shape``, original size =
    image size, scale factor 1."""
    pad = tuple(int(s) for s in pad_shape)
    return [dict(img_shape=tuple(int(s) for s in shape),
                 ori_shape=tuple(int(s) for s in shape),
                 scale_factor=(1.0, 1.0), pad_shape=pad,
                 batch_input_shape=pad) for shape in img_shape]


def verify_detector(detector: torch.nn.Module, session, inputs: Tensor,
                    img_shape: Tensor, rtol: float = 1e-4
                    ) -> List[Dict[str, float]]:
    """:func:`compare_detections` of the file in ``session`` against
    ``detector.predict`` (mmdet, PyTorch) for each image of ``inputs``
    (N, 3, H, W) whose valid regions are ``img_shape`` (N, 2)."""
    from mmdet.structures import DetDataSample
    metas = image_metas(img_shape.tolist(), inputs.shape[2:])
    with torch.no_grad():
        refs = detector.predict(
            inputs, [DetDataSample(metainfo=m) for m in metas], rescale=True)
    outs = [torch.from_numpy(a) for a in
            run_detector_onnx(session, inputs, img_shape)]
    roi = detector.roi_head
    thr = roi.test_cfg.get('mask_thr_binary', 0.5)
    stats = []
    for i, (ref, meta) in enumerate(zip(refs, metas)):
        out = detections_to_instances(
            outs[0][i], outs[1][i], outs[2][i] if len(outs) > 2 else None,
            meta, thr)
        stats.append(compare_detections(ref.pred_instances, out, rtol))
    return stats
