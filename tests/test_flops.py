"""FLOPs counting (mmvim.utils.flops, tools/get_flops.py)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmvim.models import VMamba
from mmvim.utils.flops import count_flops, sdpa_flops, selective_scan_flops

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tools.get_flops
    sys.path.insert(0, str(ROOT))


def test_selective_scan_formula():
    # 9 B L D N, plus B D L for the D skip and for the z gate
    assert selective_scan_flops(2, 10, 4, 3, False, False) == 9 * 2 * 10 * 4 * 3
    assert selective_scan_flops(2, 10, 4, 3, True, True) == \
        9 * 2 * 10 * 4 * 3 + 2 * 2 * 4 * 10


@pytest.mark.parametrize('arch,official', [('tiny', 4.9056),
                                           ('small', 8.7158),
                                           ('base', 15.3589)])
def test_vmamba_classification_flops_match_the_official_analysis(arch,
                                                                  official):
    """Official (README / analyze): 4.9G / 8.7G / 15.4G at 224x224 for the
    classifier; ours = backbone with the one final norm + the 1000-way
    linear head."""
    model = VMamba(arch, out_indices=(3, )).eval()
    with torch.no_grad():
        flops, by_op = count_flops(model, (torch.randn(1, 3, 224, 224), ))
    flops += model.dims[-1] * 1000
    assert abs(flops / 1e9 / official - 1) < 0.02
    assert by_op['PythonOp.SelectiveScanFlops'] > 0


def test_the_real_scan_is_back_after_counting():
    from mmvim.models.layers import SS2D
    m = SS2D(8, d_state=2)
    x = torch.randn(1, 4, 5, 8)
    with torch.no_grad():
        count_flops(m, (x, ))
        out = m(x)
    assert out.abs().sum() > 0  # the stand-in returns zeros


@pytest.mark.slow
def test_get_flops_tool_on_the_upernet_config():
    """The official UperNet + VMamba-T figure is 949G at 512x2048."""
    proc = subprocess.run(
        [sys.executable, 'tools/get_flops.py',
         'configs/upernet_vmamba_t_ade20k.py', '--shape', '512', '2048'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if 'GFLOPs' in ln][0]
    gflops = float(line.split('M params,')[1].split('GFLOPs')[0])
    assert abs(gflops / 949 - 1) < 0.02


# ---------------------------------------------------------------- attention

def test_sdpa_is_counted_as_its_two_products():
    """MambaVision's Attention runs F.scaled_dot_product_attention, one jit
    node the analyser does not know (it would count 0): q @ k^T and
    attn @ v are each B * heads * L * L * head_dim multiply-adds."""
    from mmvim.models.layers.mambavision_mixer import Attention
    b, n, c, heads = 2, 49, 80, 2
    m = Attention(c, heads).eval()
    with torch.no_grad():
        flops, by_op = count_flops(m, (torch.randn(b, n, c), ))
    linear = b * n * c * 3 * c + b * n * c * c  # qkv, proj
    attention = 2 * b * heads * n * n * (c // heads)
    assert by_op['scaled_dot_product_attention'] == attention
    assert by_op['linear'] == linear
    assert flops == linear + attention


def test_sdpa_with_other_key_length_and_value_dim():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), \
        torch.randn(2, 3, 7, 4)

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    flops, _ = count_flops(M(), (q, k, v))
    assert flops == sdpa_flops([2, 3, 5, 8], [2, 3, 7, 8], [2, 3, 7, 4]) \
        == 2 * 3 * 5 * 7 * (8 + 4)


def test_string_padding_convolution_is_counted():
    """F.conv1d(padding='same') (MambaVision's mixer) traces as
    aten::_convolution_mode, which the analyser skips by default."""
    w = torch.randn(6, 1, 3)

    class M(torch.nn.Module):
        def __init__(self, padding):
            super().__init__()
            self.padding = padding

        def forward(self, x):
            return torch.nn.functional.conv1d(x, w, padding=self.padding,
                                              groups=6)

    x = torch.randn(2, 6, 10)
    same, by_op = count_flops(M('same'), (x, ))
    assert same == count_flops(M(1), (x, ))[0] == 2 * 6 * 10 * 3
    assert '_convolution_mode' in by_op


@pytest.mark.parametrize('name,attention_op,attention', [
    # 12 blocks x 2 products x 3 heads x 197^2 tokens x 64
    ('deit_t', 'bmm', 12 * 2 * 3 * 197 * 197 * 64),
    # per block 2 x tokens x 49 (window) x C, depths (2, 2, 6, 2)
    ('swin_t', 'matmul', sum(d * 2 * t * 49 * c for d, t, c in
                             ((2, 3136, 96), (2, 784, 192), (6, 196, 384),
                              (2, 49, 768)))),
])
def test_baselines_count_their_attention(name, attention_op, attention):
    """DeiT-Ti: 5.7M / 1.3G (fvcore 1.26G), Swin-T: 28M / 4.5G with the
    ImageNet classifier at 224."""
    from mmvim.utils.presets import PRESETS
    from tools.get_flops import PUBLISHED, measure
    assert PRESETS[name][0] == 'mmseg'
    res = measure(name, classifier=1000)
    assert res['shape'] == [224, 224]
    assert res['by_operator_G'][attention_op] == pytest.approx(
        attention / 1e9, rel=1e-12)
    params, flops, _ = PUBLISHED[name]
    assert abs(res['params_M'] / params - 1) < 0.03
    assert abs(res['flops_G'] / flops - 1) < 0.04


# ---------------------------------------------------------------- configs

def _load(name):
    from mmvim.utils import load_config
    return load_config(str(ROOT / 'configs' / name))


def test_default_shapes_per_scope():
    from tools.get_flops import default_shape
    assert default_shape(_load('upernet_vim_s_ade20k.py')) == (512, 2048)
    assert default_shape(_load('mask_rcnn_vmamba_t_fpn_1x_coco.py')) == \
        (1280, 800)
    # every image is padded to 1024x1024 (BatchFixedSizePad): counted there
    assert default_shape(_load('cascade_mask_rcnn_vim_ti_vitdet_coco.py')) \
        == (1024, 1024)


def test_every_config_has_a_default_shape():
    from mmvim.utils import load_config
    from tools.get_flops import DEFAULT_SHAPES, config_paths, default_shape
    paths = config_paths()
    assert len(paths) >= 18
    assert not any(Path(p).name.startswith('demo_') for p in paths)
    for path in paths:
        assert default_shape(load_config(path)) in \
            (*DEFAULT_SHAPES.values(), (1024, 1024))


BOX_FC = 256 * 49 * 1024 + 1024 * 1024 + 1024 * 81 + 1024 * 320
MASK = (4 * 196 * 256 * 256 * 9      # 4 convs 3x3 at 14x14
        + 196 * 256 * 256 * 4        # deconv 2x2 s2
        + 784 * 256 * 80)            # 1x1 logits at 28x28


def test_mask_rcnn_counts_rpn_and_roi_heads():
    """Beyond backbone + neck: the RPN convs, the box head on
    test_cfg.rpn.max_per_img proposals and the mask head on
    test_cfg.rcnn.max_per_img RoIs (here 200 / 20 to stay fast)."""
    from tools.get_flops import measure
    res = measure(str(ROOT / 'configs/mask_rcnn_vmamba_t_fpn_1x_coco.py'),
                  shape=(128, 96), cfg_options={
                      'model.backbone.depths': (1, 1, 1, 1),
                      'model.test_cfg.rpn.max_per_img': 200,
                      'model.test_cfg.rcnn.max_per_img': 20})
    parts = res['parts_G']
    assert set(parts) >= {'backbone', 'neck', 'rpn_head', 'roi_head'}
    assert parts['rpn_head'] > 0
    # Shared2FCBBoxHead: fc6, fc7, cls (81), reg (4 x 80), per proposal
    assert parts['roi_head.bbox_head'] == pytest.approx(200 * BOX_FC / 1e9,
                                                        rel=1e-12)
    assert parts['roi_head.mask_head'] == pytest.approx(20 * MASK / 1e9,
                                                        rel=1e-12)
    assert res['flops_G'] == pytest.approx(sum(
        v for k, v in parts.items() if not k.startswith('roi_head.')))
    assert '200 proposals' in res['counted'] and '20 RoIs' in res['counted']


def test_mask_rcnn_count_equals_mmdet_tensor_forward():
    """mmdet 3.3's own get_flops path (model._forward in tensor mode, the
    real RPN + NMS) counts the same when its RPN keeps max_per_img
    proposals (as VMamba's 271G: 1000 proposals, masks on rois[:100])."""
    from mmdet.structures import DetDataSample

    from mmvim.utils.flops import analyse_flops
    from tools.get_flops import build
    model, fn, _, _ = build(
        str(ROOT / 'configs/mask_rcnn_vmamba_t_fpn_1x_coco.py'),
        {'model.backbone.depths': (1, 1, 1, 1),
         'model.test_cfg.rpn.max_per_img': 60})
    h, w = 160, 128
    x = torch.randn(1, 3, h, w)
    sample = DetDataSample(metainfo=dict(
        img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
        batch_input_shape=(h, w), scale_factor=(1., 1.)))
    kept = []
    forward = model.roi_head.forward

    def roi_forward(feats, rpn_results, samples=None):
        kept.append(len(rpn_results[0]))
        return forward(feats, rpn_results, samples)

    class Ours(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return fn(x)

    class Mmdet(Ours):
        def forward(self, x):
            return model._forward(x, [sample])

    with torch.no_grad():
        ours = analyse_flops(Ours(), (x, ))['total']
        model.roi_head.forward = roi_forward
        theirs = analyse_flops(Mmdet(), (x, ))['total']
    assert kept == [60]
    assert ours == theirs


def test_cascade_counts_every_stage_and_attention():
    """Three box-head and three mask-head stages; MambaVision's attention
    is part of the backbone's count."""
    from tools.get_flops import measure
    res = measure(
        str(ROOT / 'configs/cascade_mask_rcnn_mambavision_t_fpn_3x_coco.py'),
        shape=(128, 128), cfg_options={
            'model.backbone.depths': (1, 1, 2, 2),
            'model.backbone.window_size': (8, 8, 4, 2),
            'model.test_cfg.rpn.max_per_img': 50,
            'model.test_cfg.rcnn.max_per_img': 10})
    # ConvFCBBoxHead: 4 convs 3x3 (+ BN, 2 FLOPs per element in eval) on
    # 7x7, one fc, cls and (class-wise) reg
    box = 4 * (49 * 256 * 256 * 9 + 2 * 256 * 49) + BOX_FC - 1024 * 1024
    parts = res['parts_G']
    assert parts['roi_head.bbox_head'] == pytest.approx(3 * 50 * box / 1e9,
                                                        rel=1e-12)
    assert parts['roi_head.mask_head'] == pytest.approx(3 * 10 * MASK / 1e9,
                                                        rel=1e-12)
    assert res['attention_sdpa_G'] > 0
    assert '3x box head on 50 proposals' in res['counted']


def test_checked_in_table_covers_every_config():
    import json
    path = ROOT / 'docs/benchmarks/flops_models.json'
    if not path.exists():
        pytest.skip('run python tools/get_flops.py --all')
    from tools.get_flops import config_paths
    report = json.loads(path.read_text())
    done = {r['target'] for r in report['results'] if 'error' not in r}
    assert done == {str(Path(p).relative_to(ROOT)) for p in config_paths()}
    assert {r['target'] for r in report['backbones']} >= {
        'deit_t', 'deit_s', 'swin_t'}


@pytest.mark.slow
def test_mask_rcnn_vmamba_t_whole_detector():
    """VMamba's own analysis (mmengine, (3, 1280, 800)): 271,163,376,640."""
    from tools.get_flops import measure
    res = measure(str(ROOT / 'configs/mask_rcnn_vmamba_t_fpn_1x_coco.py'))
    assert res['shape'] == [1280, 800]
    assert abs(res['flops_G'] / 271.16337664 - 1) < 1e-4
