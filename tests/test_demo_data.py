"""The embedded demo scenes: segmentation and COCO instance layouts agree."""
import json

import numpy as np
import torch
from pycocotools import mask as mask_utils

from mmvim.datasets import make_demo_detection, render_instances, render_scene


def test_instances_agree_with_label_map():
    for seed in range(5):
        img, label = render_scene(seed, 96)
        img2, objects = render_instances(seed, 96, min_area=0)
        assert np.array_equal(img, img2)
        rebuilt = np.zeros_like(label)
        for kind, mask in objects:
            rebuilt[mask] = kind
        assert np.array_equal(rebuilt, label)
        # visible masks of one scene never overlap
        total = sum(m.astype(int) for _, m in objects)
        assert total.max() <= 1


def test_coco_files_are_consistent_and_cached(tmp_path):
    root = make_demo_detection(str(tmp_path / 'coco'), num_train=4,
                               num_val=2, size=64)
    ann = json.loads(
        (tmp_path / 'coco/annotations/instances_train2017.json').read_text())
    assert [c['name'] for c in ann['categories']] == ['disc', 'square',
                                                       'triangle']
    assert len(ann['images']) == 4 and ann['annotations']
    for a in ann['annotations']:
        m = mask_utils.decode(dict(a['segmentation'],
                                   counts=a['segmentation']['counts'].encode()))
        ys, xs = np.nonzero(m)
        assert a['area'] == m.sum() >= 16
        assert a['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                             ys.max() - ys.min() + 1]
        assert 1 <= a['category_id'] <= 3
    stamp = (tmp_path / 'coco/meta.json').stat().st_mtime_ns
    assert make_demo_detection(root, num_train=4, num_val=2, size=64) == root
    assert (tmp_path / 'coco/meta.json').stat().st_mtime_ns == stamp


def test_demo_coco_loads_with_the_demo_detection_config(tmp_path):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    root = make_demo_detection(str(tmp_path / 'coco'), 4, 2, 64)
    cfg = Config.fromfile('configs/demo_mask_rcnn_vmamba_shapes.py')
    assert cfg.default_scope == 'mmdet'
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.data_root = root + '/'
    ds = DATASETS.build(ds_cfg)
    item = ds[0]
    assert item['inputs'].shape[0] == 3
    assert len(item['data_samples'].gt_instances) > 0
    assert ds.metainfo['classes'] == ('disc', 'square', 'triangle')


def test_demo_configs_inherit_the_real_configs():
    from mmengine.config import Config
    seg = Config.fromfile('configs/demo_upernet_vim_shapes.py')
    assert seg.model.backbone.type == 'Vim'
    assert seg.model.neck.type == 'Feature2Pyramid'
    assert seg.optim_wrapper.constructor == \
        'VimLayerDecayOptimizerConstructor'
    assert seg.val_evaluator.type == 'IoUMetric'
    det = Config.fromfile('configs/demo_mask_rcnn_vmamba_shapes.py')
    assert det.model.backbone.type == 'VMamba'
    assert det.model.type == 'MaskRCNN'
    assert det.val_evaluator.type == 'CocoMetric'
    assert det.optim_wrapper.paramwise_cfg.custom_keys['norm'] == \
        dict(decay_mult=0.0)


def test_a_short_demo_training_lowers_the_loss(tmp_path):
    """Twenty optimiser steps of the segmentation demo on real demo images
    (its own pipeline) reduce the training loss clearly."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import DATASETS, MODELS
    from mmseg.utils import register_all_modules

    import mmvim  # noqa: F401
    from mmvim.datasets import make_demo_segmentation
    register_all_modules()
    torch.manual_seed(0)
    cfg = Config.fromfile('configs/demo_upernet_vim_shapes.py')
    root = make_demo_segmentation(str(tmp_path / 'seg'), 8, 2, 128)
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.data_root = root
    dataset = DATASETS.build(ds_cfg)
    batch = pseudo_collate([dataset[i] for i in range(8)])
    model = MODELS.build(cfg.model)
    model.init_weights()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    for group in wrapper.optimizer.param_groups:  # skip the demo's warm-up
        group['lr'] = group['lr'] * 0.5
    losses = [float(model.train_step(batch, wrapper)['loss'])
              for _ in range(20)]
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], losses
