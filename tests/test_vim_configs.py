"""The Vim reproduction configs hold the official settings."""
from mmengine.config import Config

SEG_CONFIGS = ['configs/upernet_vim_ti_ade20k.py',
               'configs/upernet_vim_s_ade20k.py']


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


CASCADE = 'configs/cascade_mask_rcnn_vim_ti_vitdet_coco.py'


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


def test_vitdet_neck_maps_pool_in_mmcv_roi_align_as_they_are():
    """mmcv's compiled RoIAlign reads its input as contiguous NCHW memory:
    the SimpleFeaturePyramid's LN outputs must be laid out so (the RoI
    heads pooled scrambled maps before)."""
    import torch
    from mmcv.ops import roi_align

    from mmvim.models.necks.simple_fpn import SimpleFeaturePyramid
    neck = SimpleFeaturePyramid(16, 8).eval()
    with torch.no_grad():
        feats = neck([torch.randn(1, 16, 8, 10)])
    rois = torch.tensor([[0., 2., 3., 30., 25.], [0., 10., 1., 60., 40.]])
    for feat, scale in zip(feats, (1 / 4, 1 / 8, 1 / 16, 1 / 32)):
        pooled = roi_align(feat, rois, (7, 7), scale, 0, 'avg', True)
        clean = roi_align(feat.contiguous(), rois, (7, 7), scale, 0, 'avg',
                          True)
        assert torch.equal(pooled, clean)
