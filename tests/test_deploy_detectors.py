"""Whole two-stage detectors in ONNX (mmvim.deploy.det_graph, det_ops,
onnx_det_ops, onnx_detector; tools/deploy/export_onnx.py, and tools/test.py
/ tools/infer.py with a detector's .onnx file).

Each detection family (VMamba Mask R-CNN, MambaVision Cascade Mask R-CNN,
Vim Cascade ViTDet) as a tiny model: its traceable module gives
``model.predict``'s detections in PyTorch, and its dynamic .onnx file gives
them in onnxruntime at two sizes and batch 2 (the same detections in the
same order, boxes and scores within 1e-4 relative, mask IoU >= 0.99). The
tiny models' classification layers are drawn so that their scores are
distinct (``distinct_scores``) and many detections pass the threshold.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime', reason='the deploy extra is not '
                    'installed (pip install -e .[deploy])')

ROOT = Path(__file__).resolve().parents[1]
DET_DEMO = 'configs/demo_mask_rcnn_vmamba_shapes.py'
RTOL = 1e-4


def _heads(channels: int = 32, classes: int = 4, stages: int = 0) -> dict:
    """--cfg-options that shrink mmdet's heads (``stages`` box heads of a
    cascade) and the number of proposals and detections."""
    options = {
        'model.neck.out_channels': channels,
        'model.rpn_head.in_channels': channels,
        'model.rpn_head.feat_channels': channels,
        'model.roi_head.bbox_roi_extractor.out_channels': channels,
        'model.roi_head.mask_roi_extractor.out_channels': channels,
        'model.roi_head.mask_head.in_channels': channels,
        'model.roi_head.mask_head.conv_out_channels': channels,
        'model.roi_head.mask_head.num_classes': classes,
        'model.test_cfg.rpn.nms_pre': 200,
        'model.test_cfg.rpn.max_per_img': 100,
        'model.test_cfg.rcnn.max_per_img': 30}
    head = dict(in_channels=channels, fc_out_channels=64,
                num_classes=classes)
    if stages:
        head['conv_out_channels'] = channels
        for i in range(stages):
            options.update({f'model.roi_head.bbox_head.{i}.{k}': v
                            for k, v in head.items()})
    else:
        options.update({f'model.roi_head.bbox_head.{k}': v
                        for k, v in head.items()})
    return options


TINY = {
    'vmamba': ('configs/mask_rcnn_vmamba_t_fpn_1x_coco.py', dict(
        _heads(), **{'model.backbone.dims': 16,
                     'model.backbone.depths': (1, 1, 1, 1),
                     'model.backbone.init_cfg': None,
                     'model.neck.in_channels': [16, 32, 64, 128]})),
    # windows that do not divide the maps: the padding is in the graph
    'mambavision': ('configs/cascade_mask_rcnn_mambavision_t_fpn_3x_coco.py',
                    dict(_heads(stages=3), **{
                        'model.backbone.dim': 16, 'model.backbone.in_dim': 8,
                        'model.backbone.depths': (1, 1, 2, 2),
                        'model.backbone.window_size': (8, 8, 6, 3),
                        'model.backbone.init_cfg': None,
                        'model.neck.in_channels': [16, 32, 64, 128]})),
    'vim': ('configs/cascade_mask_rcnn_vim_ti_vitdet_coco.py', dict(
        _heads(stages=3), **{'model.backbone.embed_dims': 32,
                             'model.backbone.depth': 2,
                             'model.backbone.img_size': 64,
                             'model.backbone.out_indices': (1, ),
                             'model.backbone.init_cfg': None,
                             'model.neck.in_channels': 32})),
}


def run_tool(*args, timeout=1200):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=env)


def _tiny(family: str):
    from mmvim.deploy import load_model
    from mmvim.deploy.det_graph import DetectorGraph, distinct_scores
    config, options = TINY[family]
    cfg, model = load_model(str(ROOT / config), cfg_options=options)
    distinct_scores(model, torch.randn(1, 3, 96, 128,
                                       generator=torch.Generator()
                                       .manual_seed(1)))
    return model, DetectorGraph(model).eval()


def _batch(n: int, h: int, w: int, seed: int = 0):
    """Inputs (n, 3, h, w) and their img_shape: the second image is smaller
    than the padded batch (boxes clamp to it)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[h, w]] + [[h - 16, w - 24]] * (n - 1))
    return torch.randn(n, 3, h, w, generator=gen), shapes


def _predict(model, inputs, shapes):
    from mmdet.structures import DetDataSample

    from mmvim.deploy.onnx_detector import image_metas
    metas = image_metas(shapes.tolist(), inputs.shape[2:])
    with torch.no_grad():
        return [r.pred_instances for r in model.predict(
            inputs, [DetDataSample(metainfo=m) for m in metas])], metas


# ---------------------------------------------------------------------------
# the operators
# ---------------------------------------------------------------------------
def test_operators_equal_mmcv_in_onnxruntime(tmp_path):
    """mmvim::multilevel_roi_align is mmcv's RoIAlign level by level (to the
    bit), mmvim::batched_nms mmcv's batched_nms (class offsets, score
    order, max_num), as PyTorch operators and as ONNX RoiAlign /
    NonMaxSuppression in onnxruntime."""
    from mmcv.ops import batched_nms as mmcv_nms
    from mmcv.ops import roi_align

    from mmvim.deploy import det_ops  # noqa: F401
    from mmvim.deploy.export import export_onnx, onnx_session

    class Ops(torch.nn.Module):
        def forward(self, f0, f1, rois, boxes, scores, idxs):
            levels = (rois[:, 3] - rois[:, 1] > 40).long()
            pooled = torch.ops.mmvim.multilevel_roi_align(
                [f0, f1], rois, levels, [7, 7], [0.25, 0.125], 0, True)
            keep = torch.ops.mmvim.batched_nms(boxes, scores, idxs,
                                               scores > 0.3, 0.5, 40)
            return pooled, keep

    gen = torch.Generator().manual_seed(0)
    f0, f1 = torch.randn(2, 4, 24, 32, generator=gen), \
        torch.randn(2, 4, 12, 16, generator=gen)
    xy = torch.rand(60, 2, generator=gen) * 100
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=gen).float(),
                      xy, xy + torch.rand(60, 2, generator=gen) * 60], 1)
    rois[:3, 3] = rois[:3, 1]  # zero width: zeros, as mmcv
    xy = torch.rand(2, 500, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + torch.rand(2, 500, 2, generator=gen) * 40
                       + 1], 2)
    scores = torch.randperm(1000, generator=gen).view(2, 500).float() / 1000
    idxs = torch.randint(0, 5, (2, 500), generator=gen)
    args = (f0, f1, rois, boxes, scores, idxs)
    pooled, keep = Ops()(*args)
    levels = (rois[:, 3] - rois[:, 1] > 40).long()
    for level, (feat, scale) in enumerate(((f0, 0.25), (f1, 0.125))):
        inds = levels == level
        assert torch.equal(pooled[inds], roi_align(
            feat, rois[inds], (7, 7), scale, 0, 'avg', True))
    for i in range(2):
        valid = (scores[i] > 0.3).nonzero().squeeze(1)
        _, ref = mmcv_nms(boxes[i, valid], scores[i, valid],
                          idxs[i, valid], dict(type='nms', iou_threshold=0.5))
        assert torch.equal(keep[i], valid[ref[:40]])
    path = str(tmp_path / 'ops.onnx')
    names = ['f0', 'f1', 'rois', 'boxes', 'scores', 'idxs']
    export_onnx(Ops(), args, path, input_names=names)
    out = onnx_session(path).run(None, {k: v.numpy() for k, v in
                                        zip(names, args)})
    assert np.array_equal(out[0], pooled.numpy())
    assert np.array_equal(out[1], keep.numpy())


# ---------------------------------------------------------------------------
# whole detectors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('family', list(TINY))
def test_traceable_graph_gives_model_predict(family):
    """In PyTorch the exported module's rewrites of mmdet's prediction
    (batched post-processing, NMS / RoIAlign operators, cascade
    refinement) give model.predict's detections, for a batch of two image
    sizes."""
    from mmvim.deploy.onnx_detector import (
        compare_detections,
        detections_to_instances,
        same_detections,
    )
    model, graph = _tiny(family)
    inputs, shapes = _batch(2, 96, 128)
    refs, metas = _predict(model, inputs, shapes)
    with torch.no_grad():
        dets, labels, masks = graph(inputs, shapes)
    for i, ref in enumerate(refs):
        out = detections_to_instances(dets[i], labels[i], masks[i], metas[i])
        stats = compare_detections(ref, out, 1e-6)
        assert stats['ref'] > 5 and same_detections(stats, 1e-6), stats


def _export_and_check(tmp_path, family, dynamic, shape):
    from mmvim.deploy import export_onnx, onnx_session
    from mmvim.deploy.onnx_detector import same_detections, verify_detector
    model, graph = _tiny(family)
    path = str(tmp_path / f'{family}.onnx')
    info = export_onnx(graph, graph.example_inputs(torch.randn(1, 3, *shape)),
                       path, dynamic, output_names=graph.output_names(),
                       input_names=graph.input_names())
    session = onnx_session(path)
    batches = [(1, *shape)] + ([(2, 128, 96)] if dynamic else [])
    for n, h, w in batches:
        inputs, shapes = _batch(n, h, w, seed=h)
        for stats in verify_detector(model, session, inputs, shapes, RTOL):
            assert stats['ref'] > 5 and same_detections(stats, RTOL), \
                (n, h, w, stats)
    return info


# VMamba in the fast suite; each export costs 20-50 s on 2 cores
@pytest.mark.parametrize('family', [
    'vmamba', pytest.param('mambavision', marks=pytest.mark.slow),
    pytest.param('vim', marks=pytest.mark.slow)])
def test_family_exports_dynamic_and_matches_predict(tmp_path, family):
    """One file with dynamic batch, height and width: onnxruntime gives
    model.predict's detections at 96x128 and, for a batch of 2 with a
    smaller second image, at 128x96."""
    import onnx
    _export_and_check(tmp_path, family, True, (96, 128))
    graph = onnx.load(str(tmp_path / f'{family}.onnx')).graph
    assert [i.name for i in graph.input] == ['inputs', 'img_shape']
    assert [o.name for o in graph.output] == ['dets', 'labels', 'masks']
    dims = graph.output[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 30 and dims[2].dim_value == 5  # K, 5


@pytest.mark.slow
def test_static_exports_do_not_grow_with_the_input(tmp_path):
    """Static files at 128x128 and 128x256 match model.predict and have the
    same number of nodes (the scan is a Loop, NMS and RoiAlign take any
    number of boxes). Every stage's token count is a whole number of scan
    chunks at both sizes: a static file folds away the zero padding of the
    others, a few nodes."""
    counts = [_export_and_check(tmp_path, 'vmamba', False, shape)['nodes']
              for shape in ((128, 128), (128, 256))]
    assert counts[0] == counts[1]


# ---------------------------------------------------------------------------
# the tools
# ---------------------------------------------------------------------------
def test_test_tool_checks_the_onnx_file(tmp_path):
    fake = tmp_path / 'det.onnx'
    fake.write_bytes(b'not a model')
    proc = run_tool('tools/test.py', DET_DEMO, fake)
    assert proc.returncode == 2
    assert 'is not an ONNX model' in proc.stderr and \
        'Traceback' not in proc.stderr


@pytest.fixture(scope='module')
def exported_demo(tmp_path_factory):
    """The detection demo (random weights with distinct scores, saved as a
    checkpoint) on a few generated scenes, exported by the tool at the
    test pipeline's 128x128."""
    from mmvim.datasets import make_demo_detection
    from mmvim.deploy import load_model
    from mmvim.deploy.det_graph import distinct_scores
    root = tmp_path_factory.mktemp('deploy_det_demo')
    data = make_demo_detection(str(root / 'data'), 4, 8, 128)
    _, model = load_model(str(ROOT / DET_DEMO))
    distinct_scores(model, torch.randn(1, 3, 128, 128))
    ckpt = root / 'demo_det.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    onnx_file = root / 'demo_det.onnx'
    proc = run_tool('tools/deploy/export_onnx.py', DET_DEMO, ckpt, '--shape',
                    128, 128, '--out', onnx_file, '--verify')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'detections in PyTorch' in proc.stdout, proc.stdout
    common = ['--cfg-options', f'test_dataloader.dataset.data_root={data}/',
              f'test_evaluator.ann_file={data}/annotations/'
              'instances_val2017.json', 'test_dataloader.num_workers=0',
              'test_dataloader.persistent_workers=False']
    return dict(root=root, data=data, ckpt=ckpt, onnx=onnx_file,
                common=common)


@pytest.mark.slow
def test_test_tool_gives_the_checkpoints_detections(exported_demo):
    """tools/test.py with the .onnx file: mmdet's CocoMetric finds the
    checkpoint's detections (its result files: boxes, scores, mask RLEs)
    and the same box and mask AP."""
    metrics, results = {}, {}
    for key in ('ckpt', 'onnx'):
        out = exported_demo['root'] / f'{key}.json'
        prefix = exported_demo['root'] / f'results_{key}'
        proc = run_tool('tools/test.py', DET_DEMO, exported_demo[key],
                        '--work-dir', exported_demo['root'] / f'test_{key}',
                        '--out', out, *exported_demo['common'],
                        f'test_evaluator.outfile_prefix={prefix}')
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[key] = json.loads(out.read_text())
        results[key] = {kind: json.loads(Path(f'{prefix}.{kind}.json')
                                         .read_text())
                        for kind in ('bbox', 'segm')}
    for name in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert metrics['ckpt'][name] == metrics['onnx'][name], metrics
    ref, out = results['ckpt'], results['onnx']
    assert len(ref['bbox']) == len(out['bbox']) > 20
    for a, b in zip(ref['bbox'], out['bbox']):
        assert (a['image_id'], a['category_id']) == \
            (b['image_id'], b['category_id'])
        assert np.allclose(a['bbox'], b['bbox'], rtol=0, atol=1e-3)
        assert abs(a['score'] - b['score']) < 1e-4
    same = [a['segmentation'] == b['segmentation']
            for a, b in zip(ref['segm'], out['segm'])]
    assert np.mean(same) > 0.95  # RLEs; a pixel at 0.5 may flip


@pytest.mark.slow
def test_infer_with_onnxruntime_writes_overlays(exported_demo):
    """tools/infer.py --backend onnxruntime: an overlay and the detections
    of every scene (the same ONNXDetector.predict as tools/test.py, whose
    detections are the checkpoint's above)."""
    images = os.path.join(exported_demo['data'], 'val2017')
    out = exported_demo['root'] / 'infer_onnx'
    proc = run_tool('tools/infer.py', DET_DEMO, exported_demo['onnx'],
                    images, '--out-dir', out, '--device', 'cpu',
                    '--backend', 'onnxruntime')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((out / 'vis').glob('*'))) == 8
    preds = [json.loads(p.read_text()) for p in (out / 'preds').glob('*')]
    assert len(preds) == 8 and sum(len(p['labels']) for p in preds) > 8
    assert all(0 <= label < 3 for p in preds for label in p['labels'])
