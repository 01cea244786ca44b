"""Effective receptive field: mmvim.utils.erf and tools/erf.py."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmvim.models import MambaVision, Vim, VMamba
from mmvim.utils.erf import area_ratios, compute_erf, erf_heatmap, save_erf_png

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def erf_tool():
    """tools/erf.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location('erf_tool',
                                                  ROOT / 'tools' / 'erf.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_mambavision(**kw):
    torch.manual_seed(0)
    args = dict(dim=16, in_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4),
                window_size=(4, 4, 4, 2), drop_path_rate=0.0)
    args.update(kw)
    return MambaVision('T', **args)


def tiny_vmamba():
    torch.manual_seed(0)
    return VMamba('tiny', dims=16, depths=(1, 1, 1, 1))


def tiny_vim():
    torch.manual_seed(0)
    return Vim('tiny', embed_dims=32, depth=2, img_size=64)


def images(*shape, n=2):
    return torch.randn(n, 3, *shape, generator=torch.Generator().manual_seed(1))


def conv_interval(convs, index):
    """Input rows [lo, hi] that output row ``index`` of a chain of convs
    (in forward order) can see, along one axis (axis 0 of kernel/stride)."""
    lo = hi = index
    for conv in reversed(convs):
        k, s = conv.kernel_size[0], conv.stride[0]
        p, d = conv.padding[0], conv.dilation[0]
        lo, hi = lo * s - p, hi * s - p + d * (k - 1)
    return lo, hi


def stage0_convs(model):
    """The convs between the image and MambaVision's output 0, checking
    that nothing else on that path mixes positions."""
    path = [model.patch_embed, model.levels[0].blocks, model.outnorm0]
    pointwise = (nn.BatchNorm2d, nn.ReLU, nn.GELU, nn.Identity, nn.Sequential,
                 nn.ModuleList, nn.Module)
    convs = []
    for part in path:
        for m in part.modules():
            if isinstance(m, nn.Conv2d):
                assert m.kernel_size[0] == m.kernel_size[1]
                assert m.stride[0] == m.stride[1]
                convs.append(m)
            else:
                assert type(m).__name__ in ('ConvBlock', 'LayerNorm2d') or \
                    type(m) in pointwise, type(m)
    return convs


# ---------------------------------------------------------------- (a)
def test_conv_output_erf_is_zero_outside_its_theoretical_receptive_field():
    model = tiny_mambavision()
    convs = stage0_convs(model)
    # 2 stride-2 stem convs + 2 ConvBlocks of two 3x3 convs at stride 4
    assert len(convs) == 6
    h, w = 64, 96  # not square: rows and columns are checked separately
    erf = compute_erf(model, images(h, w), out_index=0)
    assert erf.shape == (h, w)
    out_h, out_w = model(torch.zeros(1, 3, h, w))[0].shape[-2:]
    r0, r1 = conv_interval(convs, out_h // 2)
    c0, c1 = conv_interval(convs, out_w // 2)
    assert (r1 - r0 + 1, c1 - c0 + 1) == (39, 39)  # 7 + 4 convs * 8
    assert 0 < r0 and r1 < h - 1 and 0 < c0 and c1 < w - 1
    inside = np.zeros_like(erf, dtype=bool)
    inside[r0:r1 + 1, c0:c1 + 1] = True
    assert (erf[~inside] == 0).all()
    assert erf[h // 2, w // 2] > 0
    # ... and it does fill the receptive field up to its border
    rows, cols = np.nonzero(erf)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (r0, r1, c0, c1)
    # the same backbone's last output (windowed Mamba/attention) sees further
    deep = compute_erf(model, images(h, w), out_index=-1)
    assert (deep[~inside] > 0).any()


# ---------------------------------------------------------------- (b)
@pytest.mark.parametrize('name', ['vmamba', 'vim'])
def test_global_mixing_backbone_sees_the_far_corners(name):
    model = tiny_vmamba() if name == 'vmamba' else tiny_vim()
    erf = compute_erf(model, images(64, 64), out_index=0)
    corners = [erf[:8, :8], erf[:8, -8:], erf[-8:, :8], erf[-8:, -8:]]
    assert all(c.sum() > 0 for c in corners)
    if name == 'vmamba':
        # stage 0 of VMamba: its convs alone (stem + SS2D's 3x3 depthwise
        # conv) see 15 x 15 pixels; the selective scans see everything
        convs = [m for m in model.patch_embed.modules()
                 if isinstance(m, nn.Conv2d)] + \
            [model.layers[0].blocks[0].op.conv2d]
        lo, hi = conv_interval(convs, 64 // 4 // 2)
        assert hi - lo + 1 == 15
        outside = np.ones_like(erf, dtype=bool)
        outside[lo:hi + 1, lo:hi + 1] = False
        assert (erf[outside] > 0).mean() > 0.9


# ---------------------------------------------------------------- (c)
def test_erf_map_shape_values_and_batching():
    model = tiny_vmamba()
    model.train()
    x = images(40, 56, n=3)
    erf = compute_erf(model, x, out_index=-1, batch_size=3)
    assert erf.shape == (40, 56) and erf.dtype == np.float64
    assert np.isfinite(erf).all() and (erf >= 0).all() and erf.max() > 0
    # the mean over images does not depend on how they are batched
    one_by_one = compute_erf(model, [img for img in x], out_index=-1)
    np.testing.assert_allclose(one_by_one, erf, rtol=1e-4,
                               atol=1e-6 * erf.max())
    # the model is left as it was: train mode, trainable, no grads
    assert model.training
    assert all(p.requires_grad and p.grad is None
               for p in model.parameters())


def test_out_index_out_of_range_is_an_index_error():
    with pytest.raises(IndexError, match='returned 4 outputs'):
        compute_erf(tiny_vmamba(), images(32, 32, n=1), out_index=4)


def test_heatmap_and_area_ratios_on_known_maps():
    h = w = 11
    delta = np.zeros((h, w))
    delta[5, 5] = 3.0
    assert area_ratios(delta) == {t: 1 / 121 for t in (0.2, 0.3, 0.5, 0.99)}
    uniform = np.full((h, w), 0.5)
    heat = erf_heatmap(uniform)
    assert heat.min() == heat.max() == 1.0
    # smallest odd square holding > t of 121 equal pixels
    assert area_ratios(uniform, (0.2, 0.5, 0.99)) == \
        {0.2: 25 / 121, 0.5: 81 / 121, 0.99: 1.0}
    # the log scale flattens big peaks: a spike at the centre over a floor
    spiky = np.full((h, w), 1.0)
    spiky[5, 5] = 1e6
    assert area_ratios(spiky, (0.5, ), 'raw')[0.5] == 1 / 121
    assert area_ratios(spiky, (0.5, ), 'log')[0.5] > 25 / 121
    assert area_ratios(spiky, (0.5, ), 'root')[0.5] > 25 / 121
    for scale in ('log', 'root', 'raw'):
        ramp = erf_heatmap(np.arange(12.0).reshape(3, 4), scale)
        assert ramp.min() == 0 and ramp.max() == 1
    np.testing.assert_allclose(erf_heatmap(np.array([0, 9, 99.0])),
                               [0, 0.5, 1])  # log10(x + 1) / max
    np.testing.assert_allclose(erf_heatmap(np.array([0, 1, 16.0]), 'root'),
                               [0, 0.5, 1])  # x ** 0.25 / max
    with pytest.raises(ValueError, match='scale must be one of'):
        erf_heatmap(spiky, 'sqrt')
    assert np.isnan(list(area_ratios(np.zeros((4, 4))).values())).all()


def test_save_erf_png(tmp_path):
    erf = compute_erf(tiny_vim(), images(32, 48, n=1))
    path = save_erf_png(erf, str(tmp_path / 'sub' / 'erf.png'), 'tiny Vim')
    data = Path(path).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) < 200_000


# ---------------------------------------------------------------- tools/erf.py
def run_erf(*args, timeout=300):
    return subprocess.run([sys.executable, 'tools/erf.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))


def test_cli_writes_png_and_npy_for_a_preset(tmp_path):
    import cv2
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for i in range(2):
        img = np.random.default_rng(i).integers(0, 255, (40, 30, 3))
        cv2.imwrite(str(folder / f'{i}.png'), img.astype(np.uint8))
    out = tmp_path / 'out' / 'mv.png'
    proc = run_erf('mambavision_t', '--size', '64', '--num-images', '2',
                   '--data-root', str(folder), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    erf = np.load(out.with_suffix('.npy'))
    assert erf.shape == (64, 64) and np.isfinite(erf).all() and erf.max() > 0
    assert f'images: 2 from {folder}' in proc.stdout
    assert 'high-contribution area ratio' in proc.stdout and '99%' in \
        proc.stdout
    assert 'RANDOM weights' in proc.stderr and 'not meaningful' in \
        proc.stderr


@pytest.mark.parametrize('args, message', [
    (['configs/upernet_nope.py'],
     "config file 'configs/upernet_nope.py' does not exist"),
    (['vmamba_t', '--checkpoint', 'nowhere/x.pth'],
     "checkpoint 'nowhere/x.pth' does not exist"),
    (['vmamba_x'], "unknown preset 'vmamba_x'"),
    (['vmamba_t', '--data-root', 'nowhere/'],
     "--data-root 'nowhere/' does not exist"),
])
def test_cli_user_errors_exit_2_in_one_line(args, message):
    proc = run_erf(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_whole_model_and_backbone_checkpoints_load(tmp_path):
    tool = erf_tool()
    source = tiny_mambavision()
    for p in source.parameters():
        nn.init.normal_(p)
    whole = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    whole['decode_head.conv_seg.weight'] = torch.zeros(4, 8, 1, 1)
    torch.save(dict(state_dict=whole, meta={}), tmp_path / 'whole.pth')
    torch.save(source.state_dict(), tmp_path / 'backbone.pth')
    for name in ('whole.pth', 'backbone.pth'):
        target = tiny_mambavision()
        tool.load_weights(target, str(tmp_path / name))
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (name, key)
    with pytest.raises(tool.ERFError, match='does not fit the backbone'):
        tool.load_weights(tiny_vmamba(), str(tmp_path / 'whole.pth'))


def test_config_images_weights_and_normalisation(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    tool = erf_tool()
    from mmvim.utils import load_config
    seg = load_config(str(ROOT / 'configs/upernet_vmamba_t_ade20k.py'))
    det = load_config(str(ROOT / 'configs/mask_rcnn_vmamba_t_fpn_1x_coco.py'))
    assert tool.dataset_folder(seg, None) == \
        'data/ade/ADEChallengeData2016/images/validation'
    assert tool.dataset_folder(seg, '/my/ade') == \
        '/my/ade/images/validation'
    assert tool.dataset_folder(det, None) == 'data/coco/val2017/'
    assert tool.dataset_folder(None, '/imgs') == '/imgs'
    from mmvim.utils.erf import SCALES
    assert tool.SCALES == SCALES
    names = [f'{c}/{i}.jpg' for c in 'abcd' for i in range(5)]
    assert tool.spread(names, 4) == ['a/0.jpg', 'b/0.jpg', 'c/0.jpg',
                                     'd/0.jpg']
    assert tool.spread(names[:3], 4) == names[:3]
    assert tool.normalisation(seg) == dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True)
    # the config's init_cfg: a URL that is not downloaded means random init,
    # one in the torch hub cache is used
    url = seg.model.backbone.init_cfg
    assert tool.choose_weights(None, url) == (None, {})
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / \
        'vssm1_tiny_0230s_ckpt_epoch_264.pth'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'')
    assert tool.choose_weights(None, url) == \
        (str(cached), dict(prefix=None, strict=True))
    local = tmp_path / 'pre.pth'
    local.write_bytes(b'')
    cfg = dict(type='Pretrained', checkpoint=str(local), prefix='backbone.')
    assert tool.choose_weights(None, cfg) == \
        (str(local), dict(prefix='backbone.', strict=True))
    assert tool.choose_weights(str(local), cfg) == (str(local), {})


def test_cli_on_a_config_uses_the_checkpoint_weights(tmp_path):
    """tools/erf.py on a config with a whole-model checkpoint gives the map
    that compute_erf gives for the backbone holding those weights."""
    import cv2
    tool = erf_tool()
    config = 'configs/demo_upernet_vim_shapes.py'
    backbone, cfg, init_cfg = tool.build_backbone(str(ROOT / config), 32)
    assert type(backbone).__name__ == 'Vim' and init_cfg is None
    for p in backbone.parameters():
        nn.init.normal_(p, std=0.2)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(4, 64, 1, 1)
    ckpt = tmp_path / 'iter_1.pth'
    torch.save(dict(state_dict=state, meta={}), ckpt)
    folder = tmp_path / 'imgs'
    folder.mkdir()
    img = np.random.default_rng(0).integers(0, 255, (48, 40, 3))
    cv2.imwrite(str(folder / 'a.png'), img.astype(np.uint8))
    out = tmp_path / 'erf.png'
    proc = run_erf(config, '--checkpoint', str(ckpt), '--size', '32',
                   '--num-images', '1', '--data-root', str(folder),
                   '--scale', 'root', '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    assert f'weights: {ckpt}' in proc.stdout
    assert 'RANDOM' not in proc.stderr
    expected = compute_erf(backbone, tool.load_images(
        [str(folder / 'a.png')], 32, tool.normalisation(cfg)))
    np.testing.assert_allclose(np.load(tmp_path / 'erf.npy'), expected,
                               rtol=1e-4, atol=1e-6 * expected.max())
