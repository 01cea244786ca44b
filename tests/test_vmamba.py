"""VMamba backbone: official structure, conversion, numerics (CPU)."""
import json
from pathlib import Path

import pytest
import torch

from mmvim.checkpoint import (
    CheckpointMismatchError,
    convert_vmamba,
    load_vmamba_pretrained,
)
from mmvim.models import VMamba
from mmvim.models.layers import SS2D
from mmvim.ops.reference import selective_scan_loop

KEYS = Path(__file__).resolve().parent / 'data' / 'official_keys'
PUBLISHED = {'tiny': 30_249_064, 'small': 50_147_752, 'base': 88_557_800}


def official(name):
    return json.loads((KEYS / f'vmamba_{name}.json').read_text())


def fake_state_dict(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g)
            for k, s in official(name)['state_dict'].items()}


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_parameter_count_and_keys_equal_the_release(arch):
    ref = official(arch)
    assert ref['num_params'] == PUBLISHED[arch]
    model = VMamba(arch, out_indices=())
    head = sum(torch.Size(s).numel() for k, s in ref['state_dict'].items()
               if k.startswith('classifier.'))
    assert sum(p.numel() for p in model.parameters()) + head == \
        PUBLISHED[arch]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: s for k, s in ref['state_dict'].items()
                    if not k.startswith('classifier.')}
    dense = {k: list(v.shape) for k, v in VMamba(arch).state_dict().items()}
    assert dense == official(f'{arch}_dense')['state_dict']


def test_release_converts_with_every_key_accounted(tmp_path):
    sd = fake_state_dict('tiny')
    out, report = convert_vmamba(sd)
    assert set(report.dropped) == {'classifier.norm.weight',
                                   'classifier.norm.bias',
                                   'classifier.head.weight',
                                   'classifier.head.bias'}
    assert set(report.renamed) | set(report.dropped) == set(sd)
    model = VMamba('tiny')
    expected = model.state_dict()
    assert set(expected) - set(out) == {f'outnorm{i}.{p}' for i in range(4)
                                        for p in ('weight', 'bias')}
    for k, v in out.items():
        assert v.shape == expected[k].shape, k
    # through init_cfg: loads, reports the fresh output norms, keeps values
    torch.save({'model': sd, 'model_ema': {}}, tmp_path / 'vssm_tiny.pth')
    model = VMamba('tiny', init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'vssm_tiny.pth')))
    model.init_weights()
    key = 'layers.2.blocks.7.op.x_proj_weight'
    assert torch.equal(model.state_dict()[key], sd[key])


def test_legacy_names_are_renamed_as_the_official_loader_does():
    sd = fake_state_dict('tiny')
    legacy = {}
    for k, v in sd.items():
        k = k.replace('patch_embed.0.', 'patch_embed.proj.')
        k = k.replace('patch_embed.2.', 'patch_embed.norm.')
        k = k.replace('.blocks.0.norm.', '.blocks.0.ln_1.')
        k = k.replace('.blocks.1.op.', '.blocks.1.self_attention.')
        k = k.replace('classifier.head.', 'head.')
        legacy[k] = v
    out, report = convert_vmamba(legacy)
    assert report.renamed['patch_embed.proj.weight'] == 'patch_embed.0.weight'
    assert report.renamed['layers.0.blocks.1.self_attention.A_logs'] == \
        'layers.0.blocks.1.op.A_logs'
    assert 'head.weight' in report.dropped
    assert set(out) == {k for k in sd if not k.startswith('classifier.')}


def test_wrong_architecture_and_wrong_size_are_clear_errors(tmp_path):
    vim = json.loads((KEYS / 'vim_tiny.json').read_text())['state_dict']
    with pytest.raises(CheckpointMismatchError, match='Vim checkpoint'):
        convert_vmamba({k: torch.zeros(s) for k, s in vim.items()})
    torch.save({'model': fake_state_dict('tiny')}, tmp_path / 't.pth')
    with pytest.raises(CheckpointMismatchError, match='SHAPE MISMATCH'):
        load_vmamba_pretrained(VMamba('small'), str(tmp_path / 't.pth'))
    deeper = VMamba('tiny', depths=(2, 2, 9, 2))
    with pytest.raises(CheckpointMismatchError,
                       match=r'layers\.2\.blocks\.8'):
        load_vmamba_pretrained(deeper, str(tmp_path / 't.pth'))


# ---------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------
def route_orders(h, w):
    row = [i * w + j for i in range(h) for j in range(w)]
    col = [i * w + j for j in range(w) for i in range(h)]
    return [row, col, row[::-1], col[::-1]]


@pytest.mark.parametrize('h,w', [(3, 5), (4, 4)])
def test_four_route_scan_equals_four_directional_scans(h, w):
    """SS2D.core = sum over routes of an S6 scan along that route's pixel
    order (each computed on its own with the reference loop, float64)."""
    torch.manual_seed(0)
    m = SS2D(8, d_state=2, ssm_ratio=1.5).double()
    with torch.no_grad():
        m.A_logs.add_(torch.rand_like(m.A_logs))
        m.Ds.mul_(torch.rand_like(m.Ds))
    di, r, n = m.d_inner, m.dt_rank, m.d_state
    u = torch.randn(2, di, h, w, dtype=torch.float64)
    got = m.core(u)
    flat = u.flatten(2)
    expect = torch.zeros_like(flat)
    for k, order in enumerate(route_orders(h, w)):
        seq = flat[:, :, order]  # (B, di, L) in route order
        proj = torch.einsum('cd,bdl->bcl', m.x_proj_weight[k], seq)
        dt, B, C = proj.split([r, n, n], 1)
        delta = torch.einsum('dr,brl->bdl', m.dt_projs_weight[k], dt)
        y = selective_scan_loop(
            seq, delta, -torch.exp(m.A_logs[k * di:(k + 1) * di]), B, C,
            m.Ds[k * di:(k + 1) * di], delta_bias=m.dt_projs_bias[k],
            delta_softplus=True)
        expect[:, :, order] += y
    torch.testing.assert_close(got.flatten(2), expect, rtol=1e-10,
                               atol=1e-10)


def test_any_input_size_and_strides(pyramid_shapes):
    model = VMamba('tiny', dims=16, depths=(1, 1, 1, 1)).eval()
    pyramid_shapes(model, ((64, 64), (65, 97), (32, 48), (17, 9)), 16)


def test_dense_outputs_are_normed_stage_outputs():
    torch.manual_seed(0)
    model = VMamba('tiny', dims=16, depths=(1, 1, 1, 1),
                   out_indices=(1, 3)).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        feats = model(x)
        h = model.patch_embed(x)
        stage_outs = []
        for stage in model.layers:
            h = stage.blocks(h)
            stage_outs.append(h)
            h = stage.downsample(h)
    for out, i in zip(feats, (1, 3)):
        ref = getattr(model, f'outnorm{i}')(stage_outs[i]).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, ref)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = VMamba('tiny', dims=16, depths=(1, 1, 2, 1),
                   drop_path_rate=0.1)
    outs = model(torch.randn(2, 3, 32, 48))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_path_is_linear_over_all_blocks():
    model = VMamba('tiny', dims=16, depths=(1, 2, 1, 1), drop_path_rate=0.4)
    rates = [getattr(b.drop_path, 'drop_prob', 0.0)
             for s in model.layers for b in s.blocks]
    torch.testing.assert_close(torch.tensor(rates),
                               torch.linspace(0, 0.4, 5))


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('size,params_m,dp', [('t', 62, 0.2), ('s', 82, 0.3),
                                              ('b', 122, 0.6)])
def test_upernet_configs_hold_the_official_settings(size, params_m, dp):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import mmvim  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(f'configs/upernet_vmamba_{size}_ade20k.py')
    assert cfg.model.backbone.drop_path_rate == dp
    assert cfg.optim_wrapper.optimizer.lr == 6e-5
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.01
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['norm'] == \
        dict(decay_mult=0.0)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.crop_size == (512, 512)
    assert cfg.param_scheduler[0].end == 1500
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6) == params_m  # README: 62M / 82M / 122M


@pytest.mark.parametrize('size,params_m', [('t', 50), ('s', 70), ('b', 108)])
def test_mask_rcnn_configs_hold_the_official_settings(size, params_m):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import mmvim  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(f'configs/mask_rcnn_vmamba_{size}_fpn_1x_coco.py')
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.train_dataloader.batch_size * 8 == 16
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6) == params_m  # README: 50M / 70M / 108M
    if size in ('t', 's'):
        ms = Config.fromfile(
            f'configs/mask_rcnn_vmamba_{size}_fpn_ms_3x_coco.py')
        assert ms.train_cfg.max_epochs == 36
        assert ms.param_scheduler[1].milestones == [27, 33]
        assert ms.train_dataloader.dataset.pipeline[3].type == 'RandomChoice'


def test_convert_checkpoint_tool_for_vmamba(tmp_path):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    torch.save({'model': fake_state_dict('tiny')}, tmp_path / 'rel.pth')
    proc = subprocess.run(
        [sys.executable, 'tools/convert_checkpoint.py', 'vmamba',
         str(tmp_path / 'rel.pth'), str(tmp_path / 'ours.pth')], cwd=root,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'ImageNet classifier' in proc.stdout
    model = VMamba('tiny', init_cfg=dict(type='Pretrained',
                                         checkpoint=str(tmp_path /
                                                        'ours.pth')))
    model.init_weights()


def test_frozen_stages_stay_frozen_through_train():
    model = VMamba('tiny', dims=16, depths=(1, 1, 1, 1), frozen_stages=2)
    model.train()
    for m in (model.patch_embed, model.layers[0], model.layers[1]):
        assert not any(p.requires_grad for p in m.parameters())
        assert not m.training
    assert all(p.requires_grad for p in model.layers[2].parameters())
    assert model.layers[2].training
