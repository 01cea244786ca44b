"""Vim backbone: official structure, conversion, numerics (CPU)."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmvim.checkpoint import CheckpointMismatchError, convert_vim, load_vim_pretrained
from mmvim.models import Vim
from mmvim.models.layers import BiMambaMixer

KEYS = Path(__file__).resolve().parent / 'data' / 'official_keys'
OFFICIAL = {'tiny': 'vim_tiny.json', 'small': 'vim_small.json',
            'base': 'vim_base.json'}


def official(arch):
    return json.loads((KEYS / OFFICIAL[arch]).read_text())


def fake_official_state_dict(arch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*shape, generator=g)
            for k, shape in official(arch)['state_dict'].items()}


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_parameter_count_and_keys_equal_the_release(arch):
    """Ours + the 1000-class head = the official classifier, key by key."""
    ref = official(arch)
    model = Vim(arch, with_cls_token=True, final_norm=True)
    dim = model.embed_dims
    assert count(model) + 1000 * dim + 1000 == ref['num_params']
    assert ref['num_params'] == {'tiny': 7_148_008, 'small': 25_796_584,
                                 'base': 97_598_440}[arch]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v for k, v in ref['state_dict'].items()
              if not k.startswith('head.')}
    assert ours == theirs


@pytest.mark.parametrize('arch', ['tiny', 'small'])
def test_release_converts_into_dense_model_with_every_key_accounted(arch):
    sd = fake_official_state_dict(arch)
    model = Vim(arch, img_size=512, out_indices=(5, 11, 17, 23))
    out, report = convert_vim(sd, model.grid_size)
    assert set(report.dropped) == {'head.weight', 'head.bias', 'cls_token',
                                   'norm_f.weight'}
    assert set(report.renamed) | set(report.dropped) | {'pos_embed'} == \
        set(sd)
    expected = model.state_dict()
    assert set(out) == set(expected)
    for k, v in out.items():
        assert v.shape == expected[k].shape, k
    assert out['pos_embed'].shape == (1, 32 * 32, model.embed_dims)


def test_middle_class_token_entry_is_the_one_removed():
    """The class token sits at N // 2 = 98, not 0 (the official loaders'
    bug): every patch entry must survive in order."""
    sd = fake_official_state_dict('tiny')
    pos = torch.arange(197.).view(1, 197, 1).repeat(1, 1, 192)
    sd['pos_embed'] = pos
    out, report = convert_vim(sd, (14, 14))
    kept = out['pos_embed'][0, :, 0]
    assert torch.equal(kept, torch.cat((torch.arange(98.),
                                        torch.arange(99., 197.))))
    assert 'index 98 removed' in report.transformed['pos_embed']
    # a model that keeps the token gets it back in the middle, unchanged
    out, _ = convert_vim(sd, (14, 14), with_cls_token=True)
    assert torch.equal(out['pos_embed'], pos)


def test_pos_embed_resize_is_bicubic_of_the_patch_grid():
    sd = fake_official_state_dict('tiny')
    out, _ = convert_vim(sd, (20, 30))
    patches = torch.cat((sd['pos_embed'][:, :98], sd['pos_embed'][:, 99:]),
                        1)
    grid = patches.reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(20, 30), mode='bicubic',
                        align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out['pos_embed'], ref)


def test_other_architecture_is_a_clear_error():
    shapes = json.loads((KEYS / 'vmamba_tiny.json').read_text())['state_dict']
    sd = {k: torch.zeros(v) for k, v in list(shapes.items())}
    with pytest.raises(CheckpointMismatchError, match='VMamba'):
        convert_vim(sd, (14, 14))


def test_init_cfg_loads_release_file_and_rejects_wrong_size(tmp_path):
    small = Vim('tiny', depth=2, with_cls_token=True, final_norm=True)
    sd = dict(small.state_dict(), **{'head.weight': torch.zeros(1000, 192),
                                     'head.bias': torch.zeros(1000)})
    ckpt = tmp_path / 'vim_t_midclstok.pth'
    torch.save({'model': sd}, ckpt)
    model = Vim('tiny', depth=2, img_size=64,
                init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    model.init_weights()
    for k, v in model.state_dict().items():
        if k != 'pos_embed':
            assert torch.equal(v, sd[k]), k
    assert model.pos_embed.shape == (1, 16, 192)
    # a deeper model cannot be filled: an error naming the missing keys
    deeper = Vim('tiny', depth=3, img_size=64,
                 init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    with pytest.raises(CheckpointMismatchError, match='layers.2.mixer'):
        deeper.init_weights()
    # a wider one: shape mismatch, always an error
    wider = Vim('small', depth=2)
    with pytest.raises(CheckpointMismatchError, match='SHAPE MISMATCH'):
        load_vim_pretrained(wider, str(ckpt), strict=False)


# ---------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------
def direction_reference(mixer, x, z, suffix):
    """One direction of the mixer with plain float64 loops."""
    conv = getattr(mixer, 'conv1d' + suffix)
    xw, xb = conv.weight[:, 0].double(), conv.bias.double()
    Wx = getattr(mixer, 'x_proj' + suffix).weight.double()
    dtp = getattr(mixer, 'dt_proj' + suffix)
    A = -torch.exp(getattr(mixer, 'A' + suffix + '_log').double())
    D = getattr(mixer, 'D' + suffix).double()
    b, d, L = x.shape
    k = xw.shape[1]
    r, n = mixer.dt_rank, mixer.d_state
    y = torch.zeros(b, d, L, dtype=torch.float64)
    for bi in range(b):
        u = torch.stack([
            sum(xw[:, j] * (x[bi, :, t - (k - 1) + j]
                            if t - (k - 1) + j >= 0 else 0)
                for j in range(k)) + xb for t in range(L)], 1)
        u = u * torch.sigmoid(u)
        h = torch.zeros(d, n, dtype=torch.float64)
        for t in range(L):
            proj = Wx @ u[:, t]
            dt = F.softplus(dtp.weight.double() @ proj[:r] +
                            dtp.bias.double())
            Bt, Ct = proj[r:r + n], proj[r + n:]
            h = torch.exp(dt[:, None] * A) * h + (dt * u[:, t])[:, None] * Bt
            y[bi, :, t] = (h @ Ct + D * u[:, t]) * \
                (z[bi, :, t] * torch.sigmoid(z[bi, :, t]))
    return y


@pytest.mark.parametrize('fused,bias', [(True, False), (False, False),
                                        (True, True)])
def test_bidirectional_mixer_equals_two_directional_scans(fused, bias):
    torch.manual_seed(0)
    mixer = BiMambaMixer(8, d_state=4, fused=fused, num_layers=2,
                         bias=bias).double()
    with torch.no_grad():  # non-trivial backward-direction parameters
        mixer.dt_proj_b.bias.uniform_(-3, -1)
        mixer.A_b_log.add_(0.3)
        mixer.D_b.mul_(0.5)
        if bias:
            mixer.in_proj.bias.uniform_(-1, 1)
            mixer.out_proj.bias.uniform_(-1, 1)
    tokens = torch.randn(2, 9, 8, dtype=torch.float64)
    out = mixer(tokens)
    xz = F.linear(tokens, mixer.in_proj.weight,
                  mixer.in_proj.bias).transpose(1, 2)
    x, z = xz.chunk(2, 1)
    y_f = direction_reference(mixer, x, z, '')
    y_b = direction_reference(mixer, x.flip(-1), z.flip(-1), '_b').flip(-1)
    ref = F.linear(((y_f + y_b) / 2).transpose(1, 2), mixer.out_proj.weight,
                   mixer.out_proj.bias)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_fused_and_separate_scans_agree_in_float32():
    torch.manual_seed(1)
    mixer = BiMambaMixer(32, num_layers=4)
    x = torch.randn(2, 50, 32)
    a = mixer(x)
    mixer.fused = False
    torch.testing.assert_close(mixer(x), a, rtol=1e-5, atol=1e-6)


def block_reference(model, x):
    """The backbone re-derived from its definition (no cls, no rope)."""
    tokens, grid = model._embed(x)
    tokens = tokens + model.resized_pos_embed(grid)
    residual, hidden = None, tokens
    hiddens, residuals = [], []
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        residuals.append(residual)
        normed = residual * torch.rsqrt(residual.pow(2).mean(-1, True) +
                                        1e-5) * layer.norm.weight
        hidden = layer.mixer(normed)
        hiddens.append(hidden)
    return hiddens, residuals, grid


def test_features_hidden_and_residual_match_the_definition():
    torch.manual_seed(0)
    model = Vim('tiny', depth=3, embed_dims=32, img_size=32, patch_size=8,
                out_indices=(0, 2)).eval()
    x = torch.randn(1, 3, 32, 40)  # non-square
    with torch.no_grad():
        hiddens, residuals, grid = block_reference(model, x)
        feats = model(x)
        model.feature = 'residual'
        res_feats = model(x)
    assert grid == (4, 5)

    def as_map(t):
        return t.transpose(1, 2).reshape(1, 32, *grid)

    torch.testing.assert_close(feats[0], as_map(hiddens[0]))
    torch.testing.assert_close(feats[1], as_map(hiddens[2]))
    torch.testing.assert_close(res_feats[0], as_map(residuals[1]))
    torch.testing.assert_close(res_feats[1],
                               as_map(residuals[2] + hiddens[2]))


def test_any_input_size_and_clear_errors():
    model = Vim('tiny', depth=1, embed_dims=32, img_size=64).eval()
    with torch.no_grad():
        for h, w in ((64, 64), (48, 80), (50, 70), (16, 16)):
            (out,) = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 32, math.ceil(h / 16), math.ceil(w / 16))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match='unknown arch'):
        Vim('huge')
    with pytest.raises(ValueError, match='out of range'):
        Vim('tiny', depth=4, out_indices=(4, ))


def test_same_grid_needs_no_interpolation_and_cls_rope_run():
    model = Vim('tiny', depth=2, embed_dims=32, img_size=64,
                with_cls_token=True, use_rope=True, rope_residual=True,
                feature='residual', out_indices=(0, 1)).eval()
    assert torch.equal(model.resized_pos_embed((4, 4)),
                       torch.cat((model.pos_embed[:, :8],
                                  model.pos_embed[:, 9:]), 1))
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    assert [o.shape for o in outs] == [(2, 32, 4, 6)] * 2


def test_residual_stream_stays_float32_under_bf16():
    model = Vim('tiny', depth=2, embed_dims=32, img_size=32).to(
        torch.bfloat16).eval()
    seen = []
    model.layers[1].register_forward_hook(
        lambda m, i, o: seen.append((o[0].dtype, o[1].dtype)))
    with torch.no_grad():
        (out,) = model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert seen == [(torch.bfloat16, torch.float32)]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = Vim('tiny', depth=2, embed_dims=32, img_size=32,
                with_cls_token=True, use_rope=True, drop_path_rate=0.1,
                feature='residual', out_indices=(0, 1))
    outs = model(torch.randn(2, 3, 32, 48))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_path_schedule_is_shifted_as_official():
    model = Vim('tiny', depth=4, embed_dims=32, drop_path_rate=0.3)
    rates = [getattr(layer.drop_path, 'drop_prob', 0.0)
             for layer in model.layers]
    torch.testing.assert_close(torch.tensor(rates),
                               torch.tensor([0.0, 0.0, 0.1, 0.2]))


def test_convert_checkpoint_tool_output_loads_directly(tmp_path):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    src_model = Vim('tiny', depth=2, with_cls_token=True, final_norm=True)
    sd = dict(src_model.state_dict(),
              **{'head.weight': torch.zeros(1000, 192),
                 'head.bias': torch.zeros(1000)})
    torch.save({'model': sd}, tmp_path / 'official.pth')
    proc = subprocess.run(
        [sys.executable, 'tools/convert_checkpoint.py', 'vim',
         str(tmp_path / 'official.pth'), str(tmp_path / 'ours.pth'),
         '--img-size', '64', '96'], cwd=root, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'index 98 removed' in proc.stdout
    assert 'ImageNet classifier' in proc.stdout
    model = Vim('tiny', depth=2, img_size=(64, 96),
                init_cfg=dict(type='Pretrained',
                              checkpoint=str(tmp_path / 'ours.pth')))
    model.init_weights()
    assert model.pos_embed.shape == (1, 24, 192)
    assert torch.equal(model.layers[1].mixer.A_b_log,
                       sd['layers.1.mixer.A_b_log'])
    # a file that is not a checkpoint of this family: exit 2, clear message
    torch.save({'model': {'levels.0.blocks.0.weight': torch.zeros(1)}},
               tmp_path / 'other.pth')
    proc = subprocess.run(
        [sys.executable, 'tools/convert_checkpoint.py', 'vim',
         str(tmp_path / 'other.pth'), str(tmp_path / 'x.pth')], cwd=root,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'MambaVision' in proc.stderr


def test_missing_pretrained_file_says_where_to_get_it(tmp_path):
    model = Vim('tiny', depth=1, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'vim_t.pth')))
    with pytest.raises(FileNotFoundError, match='huggingface.co/hustvl'):
        model.init_weights()


def test_frozen_stages_stay_frozen_through_train():
    model = Vim('tiny', depth=3, embed_dims=32, frozen_stages=1)
    model.train()
    assert not model.pos_embed.requires_grad
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.layers[0].parameters())
    assert all(p.requires_grad for p in model.layers[1].parameters())
    assert not model.layers[0].training and model.layers[1].training
