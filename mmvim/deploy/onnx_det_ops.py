"""ONNX translations of the detection operators of :mod:`mmvim.deploy.det_ops`
(ONNX's own ``NonMaxSuppression`` and ``RoiAlign``, no custom domain).

``mmvim::batched_nms``: mmcv's class-offset trick, then one
``NonMaxSuppression`` per image::

    m = max of the valid boxes' coordinates           (per image)
    boxes' = boxes + idxs * (m + 1)                   (mmcv's arithmetic)
    selected = NonMaxSuppression(boxes', score or -inf where not valid,
                                 max_num, iou_threshold, lowest float)
    keep[n, rank] = box index, -1 elsewhere          (ScatterND)

onnxruntime's NonMaxSuppression computes the IoU as mmcv's CPU ``nms``
(intersection / (area_kept + area_candidate - intersection) in float32,
suppressing above the threshold) and returns an image's boxes in selection
order, i.e. by descending score: the rank of a selected box is its
position after the earlier images' boxes. Boxes of different ``idxs`` never
overlap after the offset, so one class per image is mmcv's per-class NMS
(its ``split_thr`` path gives the same set).

``mmvim::multilevel_roi_align``: per FPN level, the RoIs of that level
(``NonZero``) through ``RoiAlign`` (opset 16, ``half_pixel`` for mmcv's
``aligned=True``, 'avg', adaptive sampling for ``sampling_ratio=0``),
scattered back into place; onnxruntime's RoiAlign is mmcv's kernel
(the same Caffe2 bilinear sampling; equal to the bit on CPU).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx_ir as ir

from .onnx_scan import _Nodes, exporter_tracer

__all__ = ['batched_nms_onnx', 'multilevel_roi_align_onnx']

_LOWEST = np.finfo(np.float32).min


def build_batched_nms(g: _Nodes, boxes: ir.Value, scores: ir.Value,
                      idxs: ir.Value, valid: ir.Value, iou_threshold: float,
                      max_num: int) -> ir.Value:
    """Append the nodes of ``mmvim::batched_nms`` to ``g`` (module
    docstring); returns keep (N, max_num) int64."""
    f32 = ir.DataType.FLOAT
    neg_inf = g.const(-np.inf, np.float32)
    # mmcv: max_coordinate = boxes.max() over the image's candidates
    masked = g('Where', g('Unsqueeze', valid, g.const([2])), boxes, neg_inf)
    top = g('ReduceMax', masked, g.const([1, 2]), keepdims=1)  # (N, 1, 1)
    top = g('Where', g('IsInf', top), g.const(0, np.float32), top)
    # offsets = idxs.to(boxes) * (max_coordinate + 1); boxes + offsets[:, None]
    offsets = g('Mul', g('Unsqueeze', g('Cast', idxs, to=f32), g.const([2])),
                g('Add', top, g.const(1, np.float32)))
    shifted = g('Add', boxes, offsets)
    masked_scores = g('Unsqueeze', g('Where', valid, scores, neg_inf),
                      g.const([1]))  # (N, 1, B)
    selected = g('NonMaxSuppression', shifted, masked_scores,
                 g.const([max_num]), g.const([iou_threshold], np.float32),
                 g.const([_LOWEST], np.float32))  # (S, 3)
    image = g('Gather', selected, g.const(0), axis=1)  # (S,)
    box = g('Gather', selected, g.const(2), axis=1)
    n = g.shape(boxes, 0, 1)
    images = g('Range', g.const(0), g('Squeeze', n), g.const(1))
    one_hot = g('Cast', g('Equal', g('Unsqueeze', image, g.const([1])),
                          g('Unsqueeze', images, g.const([0]))),
                to=ir.DataType.INT64)  # (S, N)
    counts = g('ReduceSum', one_hot, g.const([0]), keepdims=0)
    starts = g('CumSum', counts, g.const(0), exclusive=1)
    position = g('Range', g.const(0), g('Squeeze', g.shape(selected, 0, 1)),
                 g.const(1))
    rank = g('Sub', position, g('Gather', starts, image, axis=0))
    where = g('Concat', g('Unsqueeze', image, g.const([1])),
              g('Unsqueeze', rank, g.const([1])), axis=1)  # (S, 2)
    empty = g('ConstantOfShape', g('Concat', n, g.const([max_num]), axis=0),
              value=ir.tensor(np.array([-1], np.int64)))
    return g('ScatterND', empty, where, box)


def batched_nms_onnx(boxes, scores, idxs, valid, iou_threshold: float,
                     max_num: int):
    """The translation of ``mmvim::batched_nms`` for ``torch.onnx.export``."""
    tracer = exporter_tracer('mmvim::batched_nms')
    g = _Nodes(tracer.opset.version)
    keep = build_batched_nms(g, boxes, scores, idxs, valid,
                             float(iou_threshold), int(max_num))
    tracer.nodes.extend(g.nodes)
    return keep


def build_multilevel_roi_align(g: _Nodes, feats: Sequence[ir.Value],
                               rois: ir.Value, levels: ir.Value,
                               output_size: Sequence[int],
                               spatial_scales: Sequence[float],
                               sampling_ratio: int, aligned: bool
                               ) -> ir.Value:
    """Append the nodes of ``mmvim::multilevel_roi_align`` to ``g``;
    returns (R, C, oh, ow)."""
    channels = feats[0].shape[1]
    if not isinstance(channels, int):
        raise ValueError('multilevel_roi_align: the feature channels must '
                         'be static for ONNX export')
    oh, ow = (int(s) for s in output_size)
    out = g('ConstantOfShape', g('Concat', g.shape(rois, 0, 1),
                                 g.const([channels, oh, ow]), axis=0),
            value=ir.tensor(np.zeros(1, np.float32)))
    mode = 'half_pixel' if aligned else 'output_half_pixel'
    for level, (feat, scale) in enumerate(zip(feats, spatial_scales)):
        inds = g('Transpose', g('NonZero', g('Equal', levels,
                                             g.const(level))),
                 perm=[1, 0])  # (k, 1)
        picked = g('GatherND', rois, inds)  # (k, 5)
        batch = g('Cast', g('Squeeze', g('Slice', picked, g.const([0]),
                                         g.const([1]), g.const([1])),
                            g.const([1])), to=ir.DataType.INT64)
        box = g('Slice', picked, g.const([1]), g.const([5]), g.const([1]))
        pooled = g('RoiAlign', feat, box, batch, mode='avg',
                   output_height=oh, output_width=ow,
                   sampling_ratio=int(sampling_ratio),
                   spatial_scale=float(scale),
                   coordinate_transformation_mode=mode)
        out = g('ScatterND', out, inds, pooled)
    return out


def multilevel_roi_align_onnx(feats, rois, levels, output_size,
                              spatial_scales, sampling_ratio: int,
                              aligned: bool):
    """The translation of ``mmvim::multilevel_roi_align`` for
    ``torch.onnx.export``."""
    tracer = exporter_tracer('mmvim::multilevel_roi_align')
    g = _Nodes(tracer.opset.version)
    out = build_multilevel_roi_align(g, list(feats), rois, levels,
                                     output_size, spatial_scales,
                                     sampling_ratio, aligned)
    tracer.nodes.extend(g.nodes)
    return out
