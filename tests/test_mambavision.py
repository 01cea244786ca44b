"""MambaVision backbone: official structure, conversion, numerics (CPU)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmvim.checkpoint import CheckpointMismatchError, convert_mambavision
from mmvim.models import MambaVision
from mmvim.models.backbones.mambavision import (
    MambaVisionLevel,
    attention_blocks,
    window_partition,
    window_reverse,
)
from mmvim.models.layers import MambaVisionMixer
from mmvim.ops.reference import selective_scan_loop

KEYS = Path(__file__).resolve().parent / 'data' / 'official_keys'
PUBLISHED = {'T': 31_794_248, 'T2': 35_104_008, 'S': 50_140_584,
             'B': 97_685_288, 'L': 227_961_048, 'L2': 241_554_824}
HEAD = ('norm.', 'head.')


def official(name):
    return json.loads((KEYS / f'mambavision_{name}.json').read_text())


def small(**kw):
    args = dict(dim=16, in_dim=8, depths=(1, 1, 3, 2), num_heads=(1, 2, 2, 4),
                window_size=(4, 4, 4, 2))
    args.update(kw)
    return MambaVision('T', **args)


@pytest.mark.parametrize('arch', list(PUBLISHED))
def test_parameter_count_and_keys_equal_the_release(arch):
    ref = official(arch)
    assert ref['num_params'] == PUBLISHED[arch]
    model = MambaVision(arch, out_indices=())
    head = sum(torch.Size(s).numel() for k, s in ref['state_dict'].items()
               if k.startswith(HEAD) and k.endswith(('weight', 'bias')))
    assert sum(p.numel() for p in model.parameters()) + head == \
        PUBLISHED[arch]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: s for k, s in ref['state_dict'].items()
                    if not k.startswith(HEAD)}
    dense = {k: list(v.shape) for k, v in MambaVision(arch).state_dict().items()}
    assert dense == official(f'{arch}_dense')['state_dict']


def test_attention_is_the_second_half_of_each_stage():
    assert list(attention_blocks(8)) == [4, 5, 6, 7]
    assert list(attention_blocks(7)) == [4, 5, 6]  # Mamba gets the middle
    assert list(attention_blocks(5)) == [3, 4]
    model = MambaVision('T', out_indices=())
    kinds = [type(b.mixer).__name__ for b in model.levels[2].blocks]
    assert kinds == ['MambaVisionMixer'] * 4 + ['Attention'] * 4


def test_release_converts_with_prefixes_and_every_key_accounted(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*s, generator=g) if s else torch.tensor(3)
          for k, s in official('T')['state_dict'].items()}
    wrapped = {'module.encoder.' + k: v for k, v in sd.items()}
    out, report = convert_mambavision(wrapped)
    assert {k.split('encoder.')[1] for k in report.dropped} == \
        {k for k in sd if k.startswith(HEAD)}
    assert set(out) == {k for k in sd if not k.startswith(HEAD)}
    torch.save({'state_dict': sd, 'args': None}, tmp_path / 'mv_t.pth.tar')
    model = MambaVision('T', init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'mv_t.pth.tar')))
    model.init_weights()
    key = 'levels.2.blocks.0.mixer.dt_proj.bias'
    assert torch.equal(model.state_dict()[key], sd[key])
    vmamba = json.loads((KEYS / 'vmamba_tiny.json').read_text())
    with pytest.raises(CheckpointMismatchError, match='VMamba checkpoint'):
        convert_mambavision({k: torch.zeros(s)
                             for k, s in vmamba['state_dict'].items()})


# ---------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------
def test_mixer_matches_an_independent_computation():
    """Official math, incl. the dt bias added twice and the 'same' convs."""
    torch.manual_seed(0)
    m = MambaVisionMixer(12, d_state=3).double()
    with torch.no_grad():
        m.dt_proj.bias.uniform_(-2, 0)
        m.A_log.add_(torch.rand_like(m.A_log))
    tokens = torch.randn(2, 9, 12, dtype=torch.float64)
    out = m(tokens)
    half, r, n = 6, m.dt_rank, 3
    xz = tokens @ m.in_proj.weight.t()  # (B, L, C)
    x, z = xz[..., :half], xz[..., half:]

    def conv_same(seq, w):  # seq (B, L, c), w (c, 1, 3), zero padded
        padded = F.pad(seq.transpose(1, 2), (1, 1))
        out = sum(padded[:, :, k:k + seq.shape[1]] * w[:, 0, k, None]
                  for k in range(3))
        return F.silu(out)  # (B, c, L)

    xc, zc = conv_same(x, m.conv1d_x.weight), conv_same(z, m.conv1d_z.weight)
    proj = xc.transpose(1, 2) @ m.x_proj.weight.t()
    dt, B, C = proj[..., :r], proj[..., r:r + n], proj[..., r + n:]
    delta = (dt @ m.dt_proj.weight.t() + m.dt_proj.bias).transpose(1, 2)
    y = selective_scan_loop(xc, delta, -torch.exp(m.A_log),
                            B.transpose(1, 2), C.transpose(1, 2), m.D,
                            delta_bias=m.dt_proj.bias, delta_softplus=True)
    ref = torch.cat((y, zc), 1).transpose(1, 2) @ m.out_proj.weight.t()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('h,w,ws', [(8, 12, 4), (5, 7, 4), (3, 3, 8)])
def test_window_partition_round_trip(h, w, ws):
    x = torch.randn(2, 3, h + (-h) % ws, w + (-w) % ws)
    wins = window_partition(x, ws)
    assert wins.shape[1:] == (ws * ws, 3)
    # tokens of a window are its pixels in row-major order
    torch.testing.assert_close(wins[0, :, 0], x[0, 0, :ws, :ws].flatten())
    torch.testing.assert_close(window_reverse(wins, ws, *x.shape[-2:]), x)


def test_padded_windows_are_cropped_back_exactly():
    """A token-wise block sees each pixel once: padding + windows + crop
    give the same map as applying it directly, for any size."""
    lin = torch.nn.Linear(3, 3)
    level = MambaVisionLevel([lin], window_size=4, downsample=None)
    for h, w in ((8, 8), (5, 11), (1, 3)):
        x = torch.randn(2, 3, h, w)
        out = level.run_blocks(x)
        assert out.shape == x.shape
        ref = lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, ref)


def test_any_input_size_and_dense_outputs(pyramid_shapes):
    pyramid_shapes(small().eval(), ((64, 64), (50, 70), (33, 17)), 16)


def test_gradient_reaches_every_parameter_and_drop_path_applies():
    torch.manual_seed(0)
    model = small(drop_path_rate=0.3, layer_scale=1e-5)
    outs = model(torch.randn(2, 3, 40, 56))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    rates = [getattr(b.drop_path, 'drop_prob', 0.0)
             for lv in model.levels for b in lv.blocks]
    torch.testing.assert_close(torch.tensor(rates),
                               torch.linspace(0, 0.3, 7))


def test_frozen_stages_stay_frozen_through_train():
    model = small(frozen_stages=2)
    model.train()
    for m in (model.patch_embed, model.levels[0], model.levels[1]):
        assert not any(p.requires_grad for p in m.parameters())
        assert not m.training
    assert model.levels[2].training


def test_url_checkpoints_are_cached_and_open_with_python_objects(tmp_path):
    """Release files pickle training args (argparse.Namespace); the URL
    loader caches the download and opens them like local files, the args
    as data, without a warning."""
    import argparse
    import warnings

    from mmvim.checkpoint.io import load_url_checkpoint
    src = tmp_path / 'src' / 'mambavision_tiny_1k.pth.tar'
    src.parent.mkdir()
    torch.save({'state_dict': {'w': torch.ones(2)},
                'args': argparse.Namespace(lr=1)}, src)
    cache = tmp_path / 'cache'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ckpt = load_url_checkpoint(src.as_uri(), model_dir=str(cache))
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
    assert ckpt['args'] == argparse.Namespace(lr=1)
    assert (cache / 'mambavision_tiny_1k.pth.tar').is_file()


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('size,lr,ws,batch', [
    ('t', 5e-5, (8, 8, 64, 32), 1), ('s', 6e-5, (8, 8, 160, 56), 2),
    ('b', 5e-5, (8, 8, 64, 32), 1)])
def test_upernet_configs_hold_the_official_settings(size, lr, ws, batch):
    from mmengine.config import Config
    cfg = Config.fromfile(f'configs/upernet_mambavision_{size}_ade20k.py')
    bb = cfg.model.backbone
    assert bb.window_size == ws and bb.drop_path_rate == 0.2
    assert cfg.optim_wrapper.optimizer.lr == lr
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.01
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == \
        {'norm': dict(decay_mult=0.0)}
    assert cfg.train_dataloader.batch_size == batch
    assert cfg.train_cfg.max_iters == 160000
    # the official schedule_160k: validation and checkpoints every 10k
    assert cfg.train_cfg.val_interval == 10000
    assert cfg.default_hooks.checkpoint.interval == 10000
    assert cfg.default_hooks.checkpoint.by_epoch is False
    assert cfg.model.decode_head.channels == 512


@pytest.mark.parametrize('size,lr', [('t', 1e-4), ('s', 1e-4), ('b', 2e-4)])
def test_cascade_configs_hold_the_official_settings(size, lr):
    from mmengine.config import Config
    cfg = Config.fromfile(
        f'configs/cascade_mask_rcnn_mambavision_{size}_fpn_3x_coco.py')
    assert cfg.model.backbone.arch == size.upper()
    assert cfg.model.backbone.window_size == (8, 8, 112, 56)
    assert cfg.optim_wrapper.optimizer.lr == lr
    assert cfg.train_cfg.max_epochs == 36
    assert cfg.param_scheduler[1].milestones == [27, 33]
    heads = cfg.model.roi_head.bbox_head
    assert [h.loss_bbox.type for h in heads] == ['GIoULoss'] * 3
    assert all(h.num_shared_convs == 4 and h.num_shared_fcs == 1
               and h.reg_decoded_bbox for h in heads)
