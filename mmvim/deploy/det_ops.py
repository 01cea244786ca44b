"""The two detection operators of an exported detector, as graph operators.

mmdet's post-processing calls mmcv's compiled ``nms`` and ``roi_align``
on tensors whose length depends on the data (boxes above a score
threshold, RoIs of one FPN level). Neither can be traced. While a detector
is exported (:mod:`mmvim.deploy.det_graph`) they are two custom operators
with fixed output shapes, whose ONNX translations
(:mod:`mmvim.deploy.onnx_det_ops`) are ONNX's own ``NonMaxSuppression`` and
``RoiAlign``; their eager implementations below call mmcv exactly as mmdet
does, so the traced module computes what ``model.predict`` computes.

* ``mmvim::batched_nms(boxes (N, B, 4), scores (N, B), idxs (N, B),
  valid (N, B), iou_threshold, max_num) -> keep (N, max_num)``: per image,
  mmcv's ``batched_nms`` (the class-offset trick: boxes of different
  ``idxs`` never suppress each other) over the ``valid`` candidates; the
  indices (into B) of the first ``max_num`` kept boxes in descending score
  order, -1 after the last one.
* ``mmvim::multilevel_roi_align(feats, rois (R, 5), levels (R,), ...) ->
  (R, C, oh, ow)``: mmdet's ``SingleRoIExtractor.forward`` after its level
  mapping: every RoI pooled by mmcv's ``RoIAlign`` ('avg') from the FPN
  level ``levels`` names.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

__all__ = ['batched_nms', 'multilevel_roi_align']


@torch.library.custom_op('mmvim::batched_nms', mutates_args=())
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, valid: Tensor,
                iou_threshold: float, max_num: int) -> Tensor:
    """Per image, mmcv's ``batched_nms(boxes[valid], scores[valid],
    idxs[valid], dict(type='nms', iou_threshold))`` (module docstring);
    returns (N, max_num) int64 indices into B, -1 padded."""
    from mmcv.ops import batched_nms as mmcv_batched_nms
    keep = torch.full((boxes.shape[0], max_num), -1, dtype=torch.long,
                      device=boxes.device)
    cfg = dict(type='nms', iou_threshold=iou_threshold)
    for i in range(boxes.shape[0]):
        inds = valid[i].nonzero(as_tuple=False).squeeze(1)
        if inds.numel() == 0:
            continue
        _, kept = mmcv_batched_nms(boxes[i, inds], scores[i, inds],
                                   idxs[i, inds], cfg)
        kept = inds[kept[:max_num]]
        keep[i, :kept.numel()] = kept
    return keep


@batched_nms.register_fake
def _(boxes: Tensor, scores: Tensor, idxs: Tensor, valid: Tensor,
      iou_threshold: float, max_num: int) -> Tensor:
    return boxes.new_empty((boxes.shape[0], max_num), dtype=torch.long)


@torch.library.custom_op('mmvim::multilevel_roi_align', mutates_args=())
def multilevel_roi_align(feats: List[Tensor], rois: Tensor, levels: Tensor,
                         output_size: List[int], spatial_scales: List[float],
                         sampling_ratio: int, aligned: bool) -> Tensor:
    """RoI features (R, C, oh, ow): RoI r pooled by mmcv's ``roi_align``
    from ``feats[levels[r]]`` (N, C, H_l, W_l); ``rois`` (R, 5) are
    (batch index, x1, y1, x2, y2) in input pixels."""
    from mmcv.ops import roi_align
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1],
                              *output_size))
    for i, (feat, scale) in enumerate(zip(feats, spatial_scales)):
        inds = (levels == i).nonzero(as_tuple=False).squeeze(1)
        if inds.numel() > 0:
            out[inds] = roi_align(feat, rois[inds], tuple(output_size),
                                  scale, sampling_ratio, 'avg', aligned)
    return out


@multilevel_roi_align.register_fake
def _(feats: List[Tensor], rois: Tensor, levels: Tensor,
      output_size: List[int], spatial_scales: List[float],
      sampling_ratio: int, aligned: bool) -> Tensor:
    return feats[0].new_empty((rois.shape[0], feats[0].shape[1],
                               *output_size))
