"""The Vim reproduction configs build, train one step and test one step on
CPU (sizes/depths shrunk here, never in the configs)."""
import pytest
import torch
from mmengine.config import Config

SEG_CONFIGS = ['configs/upernet_vim_ti_ade20k.py',
               'configs/upernet_vim_s_ade20k.py']


def shrink_seg(cfg):
    bn = dict(type='BN', requires_grad=True)
    cfg.model.backbone.update(depth=4, img_size=64, out_indices=(0, 1, 2, 3),
                              init_cfg=None)
    cfg.model.neck.norm_cfg = bn
    cfg.model.decode_head.norm_cfg = bn
    cfg.model.auxiliary_head.norm_cfg = bn
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.test_cfg = dict(mode='slide', crop_size=(64, 64),
                              stride=(43, 43))
    return cfg


def seg_batch(n=2, size=64, classes=150):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 255, (3, size, size + 16),
                                    generator=g, dtype=torch.uint8))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(
            0, classes, (1, size, size + 16), generator=g))
        s.set_metainfo(dict(img_shape=(size, size + 16),
                            ori_shape=(size, size + 16),
                            pad_shape=(size, size + 16)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('config', SEG_CONFIGS)
def test_seg_config_trains_and_tests_one_iteration(config, one_iteration):
    out = one_iteration(shrink_seg(Config.fromfile(config)), 'mmseg',
                        seg_batch)
    assert out[0].pred_sem_seg.data.shape == (1, 64, 80)


def test_seg_config_settings_are_the_official_ones():
    s = Config.fromfile(SEG_CONFIGS[1])
    t = Config.fromfile(SEG_CONFIGS[0])
    assert s.model.backbone.use_rope and s.model.backbone.feature == \
        'residual'
    assert not t.model.backbone.use_rope and t.model.backbone.feature == \
        'hidden' and not t.model.backbone.residual_in_fp32
    assert (s.optim_wrapper.optimizer.lr, t.optim_wrapper.optimizer.lr) == \
        (1e-4, 2e-4)
    assert (s.optim_wrapper.paramwise_cfg.layer_decay_rate,
            t.optim_wrapper.paramwise_cfg.layer_decay_rate) == (0.95, 0.92)
    assert s.train_cfg.max_iters == 60000 and s.crop_size == (512, 512)
    assert s.model.test_cfg == dict(mode='slide', crop_size=(512, 512),
                                    stride=(341, 341))
    assert s.train_dataloader.batch_size * 4 == 32


def test_upernet_vim_ti_parameter_count_matches_the_official_printout():
    """seg/tools/analysis_tools/vim-t-upernet.txt counts 12,901,100 for a
    model with norm_f and a 64x64 position grid (1024 input); our 512 model
    differs by exactly those (3072 position entries + norm_f, x192)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import mmvim  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(SEG_CONFIGS[0])
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert n == 12_901_100 - (3072 + 1) * 192
    cfg.model.backbone.update(img_size=1024, final_norm=True)
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == 12_901_100
