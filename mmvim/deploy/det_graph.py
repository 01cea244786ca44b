"""A whole two-stage detector (Mask R-CNN, Cascade Mask R-CNN) as one module
that torch.export can trace: what ``tools/deploy/export_onnx.py`` exports
for an mmdet config.

:class:`DetectorGraph` computes what mmdet's ``TwoStageDetector.predict``
computes (backbone, neck, RPN, RoI heads, post-processing as the config's
``test_cfg`` says), for a batch and with fixed output shapes:

* inputs ``inputs`` float32 (N, 3, H, W), the batch after the data
  preprocessor, and ``img_shape`` int64 (N, 2), each image's (height,
  width) inside the padded batch (``img_meta['img_shape']``: boxes are
  clamped to it, as mmdet clamps them);
* outputs ``dets`` (N, K, 5): x1, y1, x2, y2, score in the input's pixel
  frame, best first; ``labels`` (N, K) int64, -1 after the last detection
  (whose rows of ``dets`` are 0); with a mask head ``masks`` (N, K, M, M):
  the mask head's probabilities (sigmoid; for a cascade the mean over the
  stages) of each detection's class on its box, M x M (28 x 28). K is the
  config's ``test_cfg.rcnn.max_per_img``. Pasting them into the image and
  thresholding at ``mask_thr_binary`` is mmdet's ``FCNMaskHead``
  post-processing, run outside the file (:mod:`mmvim.deploy.onnx_detector`).

The networks are mmdet's modules, called as mmdet calls them. Only the
parts of mmdet's prediction that Python control flow makes untraceable are
rewritten, each in one function below that says what it replaces: the RPN's
and the R-CNN's post-processing (a loop over images, filters that give
data-dependent lengths, mmcv's compiled NMS), the box decoding (its clamp
reads one image's size from Python), the RoI extractor's per-level loop
(mmcv's compiled RoIAlign on the RoIs of each level) and the cascade's
per-image refinement. NMS and RoIAlign are the operators of
:mod:`mmvim.deploy.det_ops`, which run mmcv's kernels in PyTorch and
become ONNX's ``NonMaxSuppression`` and ``RoiAlign``. In PyTorch the module
gives ``model.predict``'s detections (tests/test_deploy_detectors.py).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import det_ops  # noqa: F401  (registers the operators)

__all__ = ['DetectorGraph', 'check_detector', 'decode_deltas',
           'rpn_proposals', 'roi_features', 'multiclass_detections',
           'refine_rois', 'distinct_scores', 'DET_INPUT_NAMES']

DET_INPUT_NAMES = ['inputs', 'img_shape']


def check_detector(detector: nn.Module) -> None:
    """Raise ValueError (one line: what is not supported) unless
    ``detector`` is a two-stage detector that :class:`DetectorGraph`
    exports: an RPN head, a standard or cascade RoI head with
    ``DeltaXYWHBBoxCoder`` boxes, RoIAlign ('avg') extractors and plain
    NMS."""
    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    name = type(detector).__name__
    rpn = getattr(detector, 'rpn_head', None)
    roi = getattr(detector, 'roi_head', None)
    if not isinstance(rpn, RPNHead) or \
            not isinstance(roi, (StandardRoIHead, CascadeRoIHead)):
        raise ValueError(f'{name}: only two-stage detectors with an RPNHead '
                         'and a (cascade) RoI head export whole')
    cascade = isinstance(roi, CascadeRoIHead)
    heads = list(roi.bbox_head) if cascade else [roi.bbox_head]
    for head in [rpn] + heads:
        if type(head.bbox_coder) is not DeltaXYWHBBoxCoder:
            raise ValueError(f'{name}: box coder '
                             f'{type(head.bbox_coder).__name__} is not '
                             'supported (DeltaXYWHBBoxCoder only)')
    extractors = list(roi.bbox_roi_extractor) if cascade else \
        [roi.bbox_roi_extractor]
    if roi.with_mask:
        extractors += list(roi.mask_roi_extractor) if cascade else \
            [roi.mask_roi_extractor]
    for ext in extractors:
        if type(ext).__name__ != 'SingleRoIExtractor':
            raise ValueError(f'{name}: RoI extractor {type(ext).__name__} '
                             'is not supported (SingleRoIExtractor only)')
        layer = ext.roi_layers[0]
        if type(layer).__name__ != 'RoIAlign' or layer.pool_mode != 'avg' \
                or layer.use_torchvision:
            raise ValueError(f'{name}: RoI layer {type(layer).__name__} is '
                             'not supported (mmcv RoIAlign, avg pooling)')
    for where, cfg in (('rpn', rpn.test_cfg), ('rcnn', roi.test_cfg)):
        nms = cfg.get('nms', {})
        extra = set(nms) - {'type', 'iou_threshold'}
        if nms.get('type', 'nms') != 'nms' or extra:
            raise ValueError(f'{name}: test_cfg.{where}.nms={dict(nms)} is '
                             "not supported (type='nms' with "
                             'iou_threshold only)')


def _nms_threshold(cfg) -> float:
    return float(cfg.nms.get('iou_threshold', 0.3))


def _clip_max(img_shape: Tensor) -> Tensor:
    """(N, 2) (h, w) -> (N, 1, 4) (w, h, w, h), the clamp bounds of
    x1, y1, x2, y2."""
    return img_shape.flip(-1).repeat(1, 2).unsqueeze(1)


def decode_deltas(coder, priors: Tensor, deltas: Tensor,
                  img_shape: Tensor, wh_ratio_clip: float = 16 / 1000
                  ) -> Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder.decode`` (``delta2bbox``) for a batch:
    priors, deltas (N, B, 4), ``img_shape`` (N, 2) float (h, w) -> boxes
    (N, B, 4).

    Replaces ``delta2bbox``, whose clamp to the image takes one image's
    ``max_shape`` as Python numbers and which returns early for zero boxes;
    the arithmetic is delta2bbox's, operation for operation.
    """
    means = deltas.new_tensor(coder.means).view(1, 1, -1)
    stds = deltas.new_tensor(coder.stds).view(1, 1, -1)
    denorm = deltas * stds + means
    dxy, dwh = denorm[..., :2], denorm[..., 2:]
    pxy = (priors[..., :2] + priors[..., 2:]) * 0.5
    pwh = priors[..., 2:] - priors[..., :2]
    dxy_wh = pwh * dxy
    max_ratio = np.abs(np.log(wh_ratio_clip))
    if coder.add_ctr_clamp:
        dxy_wh = torch.clamp(dxy_wh, max=coder.ctr_clamp,
                             min=-coder.ctr_clamp)
        dwh = torch.clamp(dwh, max=max_ratio)
    else:
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - (gwh * 0.5), gxy + (gwh * 0.5)], dim=-1)
    if coder.clip_border:  # clamp_(min=0, max=...) per coordinate
        boxes = torch.minimum(boxes.clamp(min=0), _clip_max(img_shape))
    return boxes


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x (N, B, ...) at index (N, K) -> (N, K, ...)."""
    shape = index.shape + x.shape[2:]
    index = index.reshape(index.shape + (1, ) * (x.dim() - 2))
    return x.gather(1, index.expand(shape))


def rpn_proposals(head, feats: Sequence[Tensor], img_shape: Tensor
                  ) -> Tuple[Tensor, Tensor]:
    """The RPN's proposals for a batch: boxes (N, P, 4) and whether each is
    one (N, P) (P = ``test_cfg.rpn.max_per_img``; fewer proposals are
    padded).

    Replaces ``RPNHead.predict_by_feat`` (a loop over images),
    ``_predict_by_feat_single`` (its ``0 < nms_pre < n`` sort is a top-k
    of every level here: the same boxes) and ``_bbox_post_process`` (``results[valid]``
    drops small boxes, a data-dependent length: here they are masked out of
    the NMS) with the same arithmetic, and mmcv's NMS with
    ``mmvim::batched_nms``.
    """
    cfg = head.test_cfg
    cls_scores, bbox_preds = head(feats)
    n = cls_scores[0].shape[0]
    priors = head.prior_generator.grid_priors(
        [s.shape[-2:] for s in cls_scores], dtype=cls_scores[0].dtype,
        device=cls_scores[0].device)
    nms_pre = cfg.get('nms_pre', -1)
    reg_dim = head.bbox_coder.encode_size
    scores, deltas, anchors, levels = [], [], [], []
    for level, (score, delta, prior) in enumerate(
            zip(cls_scores, bbox_preds, priors)):
        score = score.permute(0, 2, 3, 1).reshape(n, -1,
                                                  head.cls_out_channels)
        # foreground probability (sigmoid, or softmax without background)
        score = score.sigmoid()[..., 0] if head.use_sigmoid_cls else \
            score.softmax(-1)[..., 0]
        delta = delta.permute(0, 2, 3, 1).reshape(n, -1, reg_dim)
        prior = prior.unsqueeze(0).expand(n, -1, -1)
        if nms_pre > 0:
            # the best min(nms_pre, n) (mmdet keeps a level of n <= nms_pre
            # unsorted: the same boxes; sorting every level keeps the graph
            # the same at every input size)
            score, inds = score.topk(torch.sym_min(nms_pre, score.shape[1]),
                                     dim=1)
            delta = _gather_rows(delta, inds)
            prior = _gather_rows(prior, inds)
        scores.append(score)
        deltas.append(delta)
        anchors.append(prior)
        levels.append(torch.full_like(score, level, dtype=torch.long))
    scores = torch.cat(scores, 1)
    boxes = decode_deltas(head.bbox_coder, torch.cat(anchors, 1),
                          torch.cat(deltas, 1), img_shape)
    min_size = cfg.get('min_bbox_size', -1)
    if min_size >= 0:
        valid = (boxes[..., 2] - boxes[..., 0] > min_size) & \
            (boxes[..., 3] - boxes[..., 1] > min_size)
    else:
        valid = torch.ones_like(scores, dtype=torch.bool)
    keep = torch.ops.mmvim.batched_nms(boxes, scores, torch.cat(levels, 1),
                                       valid, _nms_threshold(cfg),
                                       int(cfg.max_per_img))
    return _gather_rows(boxes, keep.clamp(min=0)), keep >= 0


def _rois(boxes: Tensor) -> Tensor:
    """mmdet's ``bbox2roi`` for boxes (N, P, 4): (N P, 5) rows (image index,
    x1, y1, x2, y2)."""
    n, p = boxes.shape[:2]
    index = torch.arange(n, dtype=boxes.dtype, device=boxes.device)
    index = index.view(n, 1, 1).expand(n, p, 1)
    return torch.cat([index, boxes], dim=-1).reshape(n * p, 5)


def roi_features(extractor, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
    """``SingleRoIExtractor.forward(feats, rois)`` -> (R, C, oh, ow).

    Replaces the extractor's loop over FPN levels (``nonzero`` of each
    level's RoIs, mmcv's RoIAlign on them, an indexed write) by
    ``mmvim::multilevel_roi_align``; the level of each RoI is mmdet's own
    ``map_roi_levels``.
    """
    feats = list(feats[:extractor.num_inputs])
    rois = rois.type_as(feats[0])
    if len(feats) == 1:
        levels = rois.new_zeros(rois.shape[0], dtype=torch.long)
    else:
        levels = extractor.map_roi_levels(rois, len(feats))
    layers = extractor.roi_layers
    first = layers[0]
    return torch.ops.mmvim.multilevel_roi_align(
        feats, rois, levels, [int(s) for s in first.output_size],
        [float(layer.spatial_scale) for layer in layers[:len(feats)]],
        int(first.sampling_ratio), bool(first.aligned))


def multiclass_detections(head, boxes: Tensor, roi_valid: Tensor,
                          cls_score: Tensor, bbox_pred: Tensor,
                          img_shape: Tensor, cfg
                          ) -> Tuple[Tensor, Tensor, Tensor]:
    """The R-CNN's detections: dets (N, K, 5), labels (N, K) (-1: none),
    found (N, K), for RoIs ``boxes`` (N, P, 4) and the head's outputs.

    Replaces ``BBoxHead.predict_by_feat`` / ``_predict_by_feat_single``
    (per image) and ``multiclass_nms`` (``bboxes[scores > score_thr]``, a
    data-dependent length: here those candidates are masked out of the NMS;
    mmcv's ``batched_nms`` becomes ``mmvim::batched_nms``) with the same
    arithmetic: softmax, class-wise decoding, score threshold, per-class
    NMS, the best ``max_per_img``.
    """
    n, p = boxes.shape[:2]
    classes = head.num_classes
    if head.custom_cls_channels:
        scores = head.loss_cls.get_activation(cls_score)
    else:
        scores = F.softmax(cls_score, dim=-1)
    scores = scores.view(n, p, -1)[..., :classes].reshape(n, p * classes)
    per_roi = 1 if head.reg_class_agnostic else classes
    reg_dim = head.bbox_coder.encode_size
    priors = boxes.unsqueeze(2).expand(n, p, per_roi, 4)
    decoded = decode_deltas(head.bbox_coder, priors.reshape(n, -1, 4),
                            bbox_pred.view(n, -1, reg_dim), img_shape)
    decoded = decoded.view(n, p, per_roi, 4).expand(n, p, classes, 4)
    decoded = decoded.reshape(n, p * classes, 4)
    labels = torch.arange(classes, device=boxes.device).repeat(p)
    labels = labels.unsqueeze(0).expand(n, -1)
    valid = (scores > cfg.score_thr) & \
        roi_valid.unsqueeze(2).expand(n, p, classes).reshape(n, -1)
    keep = torch.ops.mmvim.batched_nms(decoded, scores, labels, valid,
                                       _nms_threshold(cfg),
                                       int(cfg.max_per_img))
    found = keep >= 0
    index = keep.clamp(min=0)
    dets = torch.cat([_gather_rows(decoded, index),
                      _gather_rows(scores, index).unsqueeze(-1)], dim=-1)
    dets = torch.where(found.unsqueeze(-1), dets, torch.zeros_like(dets))
    labels = torch.where(found, _gather_rows(labels, index),
                         torch.full_like(index, -1))
    return dets, labels, found


def refine_rois(head, boxes: Tensor, cls_score: Tensor, bbox_pred: Tensor,
                img_shape: Tensor) -> Tensor:
    """A cascade stage's refined RoIs (N, P, 4) from its RoIs ``boxes``.

    Replaces the per-image loop of ``CascadeRoIHead._refine_roi`` and
    ``BBoxHead.regress_by_class`` (whose decoding clamps to one image's
    size), with their arithmetic: the class of the highest non-background
    score, that class's deltas, decoded from the RoI.
    """
    n, p = boxes.shape[:2]
    if head.custom_activation:
        cls_score = head.loss_cls.get_activation(cls_score)
    label = cls_score[:, :-1].argmax(dim=1)
    reg_dim = head.bbox_coder.encode_size
    if not head.reg_class_agnostic:
        label = label * reg_dim
        inds = torch.stack([label + i for i in range(reg_dim)], 1)
        bbox_pred = torch.gather(bbox_pred, 1, inds)
    return decode_deltas(head.bbox_coder, boxes,
                         bbox_pred.view(n, p, reg_dim), img_shape)


class DetectorGraph(nn.Module):
    """What is exported of a two-stage detector (module docstring):
    ``(inputs (N, 3, H, W), img_shape (N, 2)) -> dets, labels[, masks]``.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        check_detector(detector)
        from mmdet.models.roi_heads import CascadeRoIHead
        self.detector = detector
        self.cascade = isinstance(detector.roi_head, CascadeRoIHead)

    @property
    def with_mask(self) -> bool:
        return bool(self.detector.roi_head.with_mask)

    def output_names(self) -> List[str]:
        names = ['dets', 'labels']
        return names + ['masks'] if self.with_mask else names

    @staticmethod
    def input_names() -> List[str]:
        return list(DET_INPUT_NAMES)

    @staticmethod
    def example_inputs(inputs: Tensor,
                       img_shape: Optional[Tensor] = None
                       ) -> Tuple[Tensor, Tensor]:
        """(inputs, img_shape) with every image filling the batch by
        default."""
        if img_shape is None:
            img_shape = torch.tensor([list(inputs.shape[2:])],
                                     dtype=torch.long)
            img_shape = img_shape.expand(inputs.shape[0], 2)
        return inputs, img_shape

    def _roi_forward(self, kind: str, stage: int, feats, rois: Tensor):
        """mmdet's ``_bbox_forward`` / ``_mask_forward`` (``kind`` 'bbox' /
        'mask') of a stage: its RoI extractor, then its head."""
        roi = self.detector.roi_head
        extractor = getattr(roi, f'{kind}_roi_extractor')
        head = getattr(roi, f'{kind}_head')
        if self.cascade:
            extractor, head = extractor[stage], head[stage]
        x = roi_features(extractor, feats, rois)
        if roi.with_shared_head:
            x = roi.shared_head(x)
        return head(x)

    def _masks(self, feats, dets: Tensor, labels: Tensor,
               found: Tensor) -> Tensor:
        """(N, K, M, M) probabilities of each detection's class:
        ``StandardRoIHead.predict_mask`` / ``CascadeRoIHead.predict_mask``
        (sigmoid per stage, mean over the stages) and the class selection
        of ``FCNMaskHead._predict_by_feat_single``, before its paste."""
        roi = self.detector.roi_head
        n, k = labels.shape
        rois = _rois(dets[..., :4])
        stages = roi.num_stages if self.cascade else 1
        head = roi.mask_head[-1] if self.cascade else roi.mask_head
        rows = torch.arange(n * k, device=dets.device)
        cls = labels.clamp(min=0).reshape(-1)
        probs = []
        for stage in range(stages):
            logits = self._roi_forward('mask', stage, feats, rois)
            # the detection's class (selected before the element-wise
            # sigmoid and mean: the same numbers, fewer of them)
            logits = logits[:, 0] if head.class_agnostic else \
                logits[rows, cls]
            probs.append(logits.sigmoid())
        masks = probs[0] if stages == 1 else torch.stack(probs).mean(dim=0)
        masks = masks.view(n, k, *masks.shape[1:])
        return torch.where(found[..., None, None], masks,
                           torch.zeros_like(masks))

    def forward(self, inputs: Tensor, img_shape: Tensor):
        det = self.detector
        roi = det.roi_head
        shape = img_shape.to(inputs.dtype)
        feats = det.extract_feat(inputs)
        boxes, valid = rpn_proposals(det.rpn_head, feats, shape)
        if self.cascade:
            # CascadeRoIHead._refine_roi: every stage's class scores are
            # averaged; the last stage's deltas decode the last RoIs
            scores = []
            for stage in range(roi.num_stages):
                cls_score, bbox_pred = self._roi_forward(
                    'bbox', stage, feats, _rois(boxes))
                scores.append(cls_score)
                if stage < roi.num_stages - 1:
                    boxes = refine_rois(roi.bbox_head[stage], boxes,
                                        cls_score, bbox_pred, shape)
            cls_score = sum(scores) / float(len(scores))
            head = roi.bbox_head[-1]
        else:
            cls_score, bbox_pred = self._roi_forward('bbox', 0, feats,
                                                     _rois(boxes))
            head = roi.bbox_head
        dets, labels, found = multiclass_detections(
            head, boxes, valid, cls_score, bbox_pred, shape, roi.test_cfg)
        if not self.with_mask:
            return dets, labels
        return dets, labels, self._masks(feats, dets, labels, found)


def distinct_scores(detector: nn.Module, inputs: Tensor, spread: float = 2.0,
                    seed: int = 0) -> None:
    """Re-draw the classification layers of a randomly initialised
    detector so that their outputs on ``inputs`` have standard deviation
    ``spread``: the RPN's ``rpn_cls``, every box head's ``fc_cls`` and every
    mask head's ``conv_logits`` (normal weights, scaled after one forward).

    With mmdet's initialisation (std 0.01) an untrained detector's scores
    are all within float rounding of 1/2 (RPN) or 1/(C + 1) (R-CNN), and
    its mask probabilities of 1/2: two runtimes then order the boxes, and
    threshold the masks, by their rounding errors. With distinct scores a
    comparison of runtimes means something (the export tool does this
    without a checkpoint; docs/deploy.md).
    """
    roi = detector.roi_head
    boxes = list(roi.bbox_head) if isinstance(roi.bbox_head, nn.ModuleList) \
        else [roi.bbox_head]
    masks = [] if not roi.with_mask else list(roi.mask_head) \
        if isinstance(roi.mask_head, nn.ModuleList) else [roi.mask_head]
    layers = [detector.rpn_head.rpn_cls] + [h.fc_cls for h in boxes] + \
        [h.conv_logits for h in masks]
    gen = torch.Generator().manual_seed(seed)
    stds = {}

    def record(module, args, out):
        stds.setdefault(module, float(out.float().std()))

    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.weight.copy_(torch.randn(layer.weight.shape,
                                               generator=gen))
            DetectorGraph(detector)(*DetectorGraph.example_inputs(inputs))
            for layer in layers:
                layer.weight.mul_(spread / max(stds.get(layer, spread),
                                               1e-12))
    finally:
        for hook in hooks:
            hook.remove()
