"""The Vim detection configs build, train one step and test one step on CPU
(sizes/depths shrunk here, never in the configs)."""
import pytest
import torch
from mmengine.config import Config

CASCADE = 'configs/cascade_mask_rcnn_vim_ti_vitdet_coco.py'
MASK_RCNN = 'configs/mask_rcnn_vim_s_fpn_1x_coco.py'


def det_batch(n=2, size=64):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    inputs, samples = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        inputs.append(torch.randint(0, 255, (3, size, size), generator=g,
                                    dtype=torch.uint8))
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 8:30, 10:40] = 1
        masks[1, 30:60, 20:50] = 1
        inst = InstanceData(
            bboxes=torch.tensor([[10., 8., 40., 30.], [20., 30., 50., 60.]]),
            labels=torch.tensor([1, 5]),
            masks=BitmapMasks(masks.numpy(), size, size))
        s = DetDataSample(gt_instances=inst)
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                            pad_shape=(size, size), scale_factor=(1., 1.),
                            batch_input_shape=(size, size)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def shrink(cfg):
    bb = cfg.model.backbone
    bb.update(depth=4, img_size=64, init_cfg=None,
              out_indices=(3, ) if len(bb.out_indices) == 1 else (0, 1, 2, 3))
    pre = cfg.model.data_preprocessor
    if pre.get('batch_augments'):
        pre.batch_augments[0]['size'] = (64, 64)
    neck = cfg.model.neck
    for n in (neck if isinstance(neck, list) else [neck]):
        if n.get('norm_cfg', {}).get('type') == 'SyncBN':
            n.norm_cfg = dict(type='BN', requires_grad=True)
    if cfg.optim_wrapper.type == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs CUDA
    return cfg


@pytest.mark.parametrize('config', [CASCADE, MASK_RCNN])
def test_det_config_trains_and_tests_one_iteration(config, one_iteration):
    out = one_iteration(shrink(Config.fromfile(config)), 'mmdet', det_batch)
    pred = out[0].pred_instances
    assert pred.bboxes.shape[1] == 4 and 'masks' in pred


def test_vitdet_config_settings_are_the_official_ones():
    cfg = Config.fromfile(CASCADE)
    bb = cfg.model.backbone
    assert (bb.arch, bb.img_size, bb.out_indices, bb.feature) == \
        ('tiny', 1024, (23, ), 'residual')
    assert bb.use_rope and bb.rope_residual and bb.drop_path_rate == 0.1
    assert cfg.model.neck.type == 'SimpleFeaturePyramid'
    assert cfg.model.rpn_head.num_convs == 2
    assert [h.type for h in cfg.model.roi_head.bbox_head] == \
        ['Shared4Conv1FCBBoxHead'] * 3
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.837
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.1
    assert cfg.train_cfg.max_iters == 184375
    assert cfg.param_scheduler[1].milestones == [163889, 177546]
    assert cfg.train_dataloader.batch_size * 16 == 64


def test_vitdet_evaluates_at_longer_side_1024():
    cfg = Config.fromfile(CASCADE)
    resize = [t for t in cfg.test_dataloader.dataset.pipeline
              if t.type == 'Resize'][0]
    assert resize.scale == (1024, 1024) and resize.keep_ratio
