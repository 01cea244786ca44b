"""Every reproduction config builds, trains one step and tests one step on
CPU. Sizes and depths are shrunk here, never in the configs."""
import glob

import pytest
import torch
from mmengine.config import Config

from mmvim.utils import syncbn_to_bn

CONFIGS = sorted(c for c in glob.glob('configs/*.py')
                 if not c.startswith('configs/demo_'))
SIZE = 64


def shrink(cfg):
    bb = cfg.model.backbone
    bb.init_cfg = None
    if bb.type == 'Vim':
        single = len(bb.out_indices) == 1
        bb.update(depth=4, img_size=SIZE,
                  out_indices=(3, ) if single else (0, 1, 2, 3))
    elif bb.type == 'VMamba':
        bb.depths = (1, 1, 1, 1)
    elif bb.type == 'MambaVision':
        bb.update(depths=(1, 1, 2, 2), window_size=(8, 8, 4, 2))
    syncbn_to_bn(cfg.model)
    pre = cfg.model.data_preprocessor
    if pre.get('size'):
        pre.size = (SIZE, SIZE)
    for aug in pre.get('batch_augments') or []:
        aug['size'] = (SIZE, SIZE)
    if cfg.model.get('test_cfg', {}).get('mode') == 'slide':
        cfg.model.test_cfg.update(crop_size=(SIZE, SIZE), stride=(43, 43))
    if cfg.optim_wrapper.type == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs CUDA
    return cfg


def seg_batch(n=2, classes=150):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    h, w = SIZE, SIZE + 16
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 255, (3, h, w), generator=g,
                                    dtype=torch.uint8))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w),
                                                    generator=g))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w),
                            pad_shape=(h, w)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def det_batch(n=2):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 255, (3, SIZE, SIZE), generator=g,
                                    dtype=torch.uint8))
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        masks[0, 8:30, 10:40] = 1
        masks[1, 30:60, 20:50] = 1
        inst = InstanceData(
            bboxes=torch.tensor([[10., 8., 40., 30.], [20., 30., 50., 60.]]),
            labels=torch.tensor([1, 5]),
            masks=BitmapMasks(masks.numpy(), SIZE, SIZE))
        s = DetDataSample(gt_instances=inst)
        s.set_metainfo(dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                            pad_shape=(SIZE, SIZE), scale_factor=(1., 1.),
                            batch_input_shape=(SIZE, SIZE)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def test_every_reproduction_config_is_covered():
    names = {c.split('/')[-1] for c in CONFIGS}
    for expected in ('upernet_vim_s_ade20k.py', 'upernet_vmamba_t_ade20k.py',
                     'cascade_mask_rcnn_vim_ti_vitdet_coco.py',
                     'mask_rcnn_vmamba_s_fpn_ms_3x_coco.py',
                     'upernet_mambavision_b_ade20k.py',
                     'cascade_mask_rcnn_mambavision_s_fpn_3x_coco.py',
                     'mask_rcnn_mambavision_t_fpn_1x_coco.py'):
        assert expected in names


@pytest.mark.parametrize('config', CONFIGS)
def test_config_trains_and_tests_one_iteration(config, one_iteration):
    cfg = shrink(Config.fromfile(config))
    if cfg.default_scope == 'mmseg':
        out = one_iteration(cfg, 'mmseg', seg_batch)
        assert out[0].pred_sem_seg.data.shape == (1, SIZE, SIZE + 16)
    else:
        out = one_iteration(cfg, 'mmdet', det_batch)
        pred = out[0].pred_instances
        assert pred.bboxes.shape[1] == 4 and 'masks' in pred
