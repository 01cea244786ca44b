"""Scan routes in the backbones: defaults unchanged (stored outputs),
non-default routes train, route semantics, checkpoints, configs."""
import glob
import json
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmvim.checkpoint import CheckpointMismatchError, load_vmamba_pretrained
from mmvim.models import MambaVision, Vim, VMamba
from mmvim.ops.routes import ROUTES, register_route, route_order

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_outputs import CASES, STORE, build, compute  # noqa: E402

KEYS = Path(__file__).resolve().parent / 'data' / 'official_keys'
SNAKE4 = ('snake', 'snake_column', 'snake_rev', 'snake_column_rev')
LOCAL4 = ('local', dict(type='local', transpose=True), 'local_rev',
          dict(type='local_rev', transpose=True))


@pytest.fixture
def torch_backend(monkeypatch):
    """The stored values are the torch backend's."""
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'torch')


# ---------------------------------------------------------------------------
# defaults: unchanged against the outputs stored before routes existed.
# Any x86-64 CPU (Intel or AMD, AVX2 or AVX-512) rounds differently from the
# one that wrote the file: tolerances are float32 round-off relative to the
# scale of each tensor, and gradients that vanish analytically are checked
# against the gradient scale, never against the stored round-off.
def assert_same_outputs(cur, ref):
    assert len(cur) == len(ref)
    for a, b in zip(cur, ref):
        torch.testing.assert_close(a, b, rtol=1e-5,
                                   atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize('name', sorted(CASES))
def test_default_backbones_match_the_stored_outputs(name, torch_backend):
    ref = torch.load(STORE)[name]
    cur = compute(name)
    assert_same_outputs(cur['outputs'], ref['outputs'])
    torch.testing.assert_close(cur['input_grad_norm'],
                               ref['input_grad_norm'], rtol=1e-5, atol=0)
    norms, names = cur['param_grad_norms'], cur['grad_names']
    assert norms.shape == ref['param_grad_norms'].shape
    zero = torch.tensor([n in cur['vanishing'] for n in names])
    # a conv bias in front of a train-mode BatchNorm: its gradient is the
    # sum over the batch of the BN input's gradient, zero analytically
    scale = norms.max()
    assert (norms[zero] <= 1e-5 * scale).all(), [
        (n, v.item()) for n, v, z in zip(names, norms, zero) if z]
    torch.testing.assert_close(norms[~zero],
                               ref['param_grad_norms'][~zero], rtol=1e-5,
                               atol=0)


def test_vanishing_gradients_are_found_from_the_model():
    """The BN-fed biases are found by the hooks, not listed by hand: all
    of MambaVision's conv blocks (conv -> BN, twice), none in Vim and
    VMamba (no BatchNorm)."""
    res = compute('mambavision')
    blocks = {n.rsplit('.', 2)[0] for n in res['grad_names']
              if '.conv1.' in n}
    assert blocks and res['vanishing'] == {
        f'{b}.{c}.bias' for b in blocks for c in ('conv1', 'conv2')}
    for name in ('vim', 'vmamba'):
        assert compute(name)['vanishing'] == set()


@pytest.mark.parametrize('name,kwargs', [
    ('vmamba', dict(scan_routes=('raster', 'column', 'raster_rev',
                                 'column_rev'))),
    ('vim', dict(scan_route='raster')),
    ('mambavision', dict(scan_route=dict(type='raster')))])
def test_the_default_routes_written_out_are_the_default(name, kwargs,
                                                        torch_backend):
    ref = torch.load(STORE)[name]
    assert_same_outputs(compute(name, **kwargs)['outputs'], ref['outputs'])


def test_vmamba_gather_path_equals_the_cross_scan_fast_path():
    """The general one-gather scan, forced on the default routes, gives the
    released model's outputs and gradients (to float round-off)."""
    model = build('vmamba')
    x = torch.randn(1, 3, *CASES['vmamba'][2])
    fast = model(x)
    grads_fast = torch.autograd.grad(sum(o.sum() for o in fast),
                                     list(model.parameters()))
    for m in model.modules():
        if hasattr(m, 'cross'):
            assert m.cross
            m.cross = False
    general = model(x)
    grads = torch.autograd.grad(sum(o.sum() for o in general),
                                list(model.parameters()))
    for a, b in zip(fast + grads_fast, general + grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# non-default routes: forward and backward at odd sizes
NON_DEFAULT = [
    ('vmamba', dict(scan_routes=SNAKE4)),
    ('vmamba', dict(scan_routes=LOCAL4)),
    ('vmamba', dict(scan_routes=('hilbert', ))),
    ('vmamba', dict(scan_routes=('atrous', dict(type='diagonal_rev'),
                                 'spiral'))),
    ('vim', dict(scan_route='snake')),
    ('vim', dict(scan_route='hilbert')),
    ('vim_cls_rope_residual', dict(scan_route=dict(type='local',
                                                   window=3))),
    ('vim_cls_rope_residual', dict(scan_route='spiral_rev')),
    ('mambavision', dict(scan_route='snake')),
    ('mambavision', dict(scan_route=dict(type='atrous', step=2))),
]


@pytest.mark.parametrize('name,kwargs', NON_DEFAULT)
def test_non_default_routes_forward_and_backward(name, kwargs):
    default = build(name)
    model = build(name, **kwargs)
    # same parameters (names and shapes) unless VMamba's K changes
    k = len(kwargs.get('scan_routes', 'xxxx'))
    if k == 4:
        assert {n: p.shape for n, p in model.named_parameters()} == \
            {n: p.shape for n, p in default.named_parameters()}
    if k == 4:
        model.load_state_dict(default.state_dict())
    h, w = CASES[name][2]
    x = torch.randn(2, 3, h, w, requires_grad=True)
    outs = model(x)
    ref = default(x)
    assert [o.shape for o in outs] == [o.shape for o in ref]
    assert all(torch.isfinite(o).all() for o in outs)
    if k == 4:  # same weights, another order: other values
        assert not torch.allclose(outs[-1], ref[-1])
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == [], no_grad


# the forward / backward parameter pairs of a Vim mixer
DIRECTION_PAIRS = (('conv1d.weight', 'conv1d_b.weight'),
                   ('conv1d.bias', 'conv1d_b.bias'),
                   ('x_proj.weight', 'x_proj_b.weight'),
                   ('dt_proj.weight', 'dt_proj_b.weight'),
                   ('dt_proj.bias', 'dt_proj_b.bias'),
                   ('A_log', 'A_b_log'), ('D', 'D_b'))


def _swap_directions(state_dict, depth):
    """Vim weights with the forward and backward mixer parameters swapped."""
    out = dict(state_dict)
    for i in range(depth):
        for a, b in DIRECTION_PAIRS:
            a, b = f'layers.{i}.mixer.{a}', f'layers.{i}.mixer.{b}'
            out[a], out[b] = state_dict[b], state_dict[a]
    return out


def test_vim_route_is_the_forward_order_and_backward_its_reversal():
    """Vim with 'raster_rev' scans forward along reversed raster with the
    forward parameters and backward along raster with the backward ones:
    the default model with the two parameter sets swapped."""
    swapped = build('vim')
    with torch.no_grad():  # A_log / D equal their _b twins at init
        for p in swapped.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = build('vim', scan_route='raster_rev')
    sd = swapped.state_dict()
    model.load_state_dict(_swap_directions(sd, model.depth))
    changed = [k for k in sd if not torch.equal(sd[k],
                                                model.state_dict()[k])]
    assert len(changed) == 2 * 2 * 7  # 2 blocks, 7 tensors per direction
    x = torch.randn(1, 3, *CASES['vim'][2])
    for a, b in zip(model(x), swapped(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_vmamba_route_k_uses_the_parameters_of_slot_k():
    """Permuting the routes and their per-route parameters together gives
    the same model (each slot's parameters serve its own route)."""
    model = build('vmamba')
    perm = [1, 0, 3, 2]
    other = build('vmamba', scan_routes=('column', 'raster', 'column_rev',
                                         'raster_rev'))
    sd = {}
    for key, v in model.state_dict().items():
        if key.endswith(('x_proj_weight', 'dt_projs_weight',
                         'dt_projs_bias')):
            v = v[perm]
        elif key.endswith(('A_logs', 'Ds')):
            v = v.view(4, -1, *v.shape[1:])[perm].reshape(v.shape)
        sd[key] = v
    other.load_state_dict(sd)
    x = torch.randn(1, 3, *CASES['vmamba'][2])
    for a, b in zip(model(x), other(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_vim_class_token_stays_in_the_middle_of_the_routed_patches():
    model = build('vim_cls_rope_residual', scan_route='hilbert',
                  use_rope=False).eval()
    seen = {}
    model.layers[0].register_forward_pre_hook(
        lambda m, args: seen.update(tokens=args[0]))
    x = torch.randn(1, 3, *CASES['vim_cls_rope_residual'][2])
    with torch.no_grad():
        model(x)
        patches, grid = model._embed(x)
        patches = patches + model.resized_pos_embed(grid)
    tokens = seen['tokens']
    n = grid[0] * grid[1]
    mid = n // 2
    mid_pos = (model.pos_embed.shape[1] - 1) // 2
    cls = model.cls_token + model.pos_embed[:, mid_pos:mid_pos + 1]
    torch.testing.assert_close(tokens[:, mid:mid + 1], cls)
    routed = patches[:, route_order('hilbert', *grid)]
    torch.testing.assert_close(
        torch.cat((tokens[:, :mid], tokens[:, mid + 1:]), 1), routed)


@pytest.mark.parametrize('route', ['snake', 'hilbert', 'local'])
@pytest.mark.parametrize('rope', [False, True])
def test_vim_features_come_back_in_raster_layout(route, rope):
    """With mixers that output zero, the 'residual' feature is the token
    embedding (RoPE-rotated by grid position): the same raster map for every
    route."""
    kwargs = dict(feature='residual', out_indices=(1, ), use_rope=rope)
    base = build('vim', **kwargs)
    with torch.no_grad():
        for layer in base.layers:
            layer.mixer.out_proj.weight.zero_()
    model = build('vim', scan_route=route, **kwargs)
    model.load_state_dict(base.state_dict())
    x = torch.randn(1, 3, *CASES['vim'][2])
    with torch.no_grad():
        out = base(x)[0]
        assert torch.equal(model(x)[0], out)
        tokens, grid = base._embed(x)
        tokens = tokens + base.resized_pos_embed(grid)
        if rope:
            tokens = base.rope(tokens, grid)
    assert torch.equal(out, tokens.transpose(1, 2).reshape(1, -1, *grid))


def test_mambavision_route_orders_the_window_tokens_of_the_mixers():
    model = build('mambavision', scan_route='snake').eval()
    seen = []
    for level in model.levels[2:]:
        for block in level.blocks:
            block.mixer.register_forward_pre_hook(
                lambda m, args: seen.append((type(m).__name__, args[0])))
    x = torch.randn(1, 3, *CASES['mambavision'][2])
    with torch.no_grad():
        model(x)
    # the first mixer of stage 2 gets the normed window tokens in snake order
    level = model.levels[2]
    with torch.no_grad():
        feats = model.patch_embed.conv_down(x)
        for lv in model.levels[:2]:
            feats = lv.downsample.reduction(lv.run_blocks(feats))
        ws = level.window_size
        pad = torch.nn.functional.pad(
            feats, (0, (-feats.shape[-1]) % ws, 0, (-feats.shape[-2]) % ws))
        from mmvim.models.backbones.mambavision import window_partition
        windows = window_partition(pad, ws)
        expect = level.blocks[0].norm1(
            windows[:, route_order('snake', ws, ws)])
    name, tokens = seen[0]
    assert name == 'MambaVisionMixer'
    torch.testing.assert_close(tokens, expect)


def test_route_arguments_are_checked_when_the_model_is_built():
    with pytest.raises(ValueError, match='unknown scan route.*hilbert'):
        VMamba(dims=8, depths=(1, 1, 1, 1), scan_routes=('snek', ))
    with pytest.raises(ValueError, match='unknown scan route'):
        Vim(embed_dims=16, depth=1, scan_route='zigzag')
    with pytest.raises(ValueError, match='ONE route'):
        Vim(embed_dims=16, depth=1, scan_route=['snake', 'hilbert'])
    with pytest.raises(ValueError, match='ONE route'):
        MambaVision(dim=8, depths=(1, 1, 1, 1), scan_route=['snake', 'raster'])
    with pytest.raises(ValueError, match='at least one'):
        VMamba(dims=8, depths=(1, 1, 1, 1), scan_routes=())


# ---------------------------------------------------------------------------
# checkpoints
def _official_vmamba_tiny(tmp_path):
    shapes = json.loads((KEYS / 'vmamba_tiny.json').read_text())
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*s, generator=g)
          for k, s in shapes['state_dict'].items()}
    path = tmp_path / 'vssm_tiny.pth'
    torch.save({'model': sd}, path)
    return sd, str(path)


def test_vmamba_with_four_other_routes_loads_the_official_checkpoint(
        tmp_path):
    sd, path = _official_vmamba_tiny(tmp_path)
    model = VMamba('tiny', scan_routes=SNAKE4, init_cfg=dict(
        type='Pretrained', checkpoint=path))
    model.init_weights()
    key = 'layers.2.blocks.7.op.x_proj_weight'
    assert torch.equal(model.state_dict()[key], sd[key])
    with torch.no_grad():
        assert all(torch.isfinite(o).all()
                   for o in model(torch.randn(1, 3, 67, 61)))


def test_vmamba_with_k_other_than_4_rejects_official_checkpoints(tmp_path):
    sd, path = _official_vmamba_tiny(tmp_path)
    model = VMamba('tiny', scan_routes=('snake', 'snake_rev'))
    assert model.layers[0].blocks[0].op.x_proj_weight.shape[0] == 2
    with pytest.raises(CheckpointMismatchError,
                       match=r'4 scan routes .* K = 2.*snake, snake_rev'):
        load_vmamba_pretrained(model, path)
    with pytest.raises(CheckpointMismatchError, match='4 scan routes'):
        model.convert_state_dict(sd)  # the dense-checkpoint path


# ---------------------------------------------------------------------------
# configs: one line away
def test_a_route_is_one_config_line(tmp_path):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import mmvim  # noqa: F401
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile('configs/demo_upernet_vim_shapes.py')
    cfg.merge_from_dict({'model.backbone.scan_route': 'hilbert'})
    assert MODELS.build(cfg.model.backbone).scan_route == 'hilbert'
    cfg = Config.fromfile('configs/demo_upernet_vmamba_shapes.py')
    cfg.merge_from_dict({'model.backbone.scan_routes': list(SNAKE4)})
    backbone = MODELS.build(cfg.model.backbone)
    assert backbone.layers[0].blocks[0].op.routes == SNAKE4


def test_a_user_route_through_custom_imports(tmp_path, monkeypatch):
    """A route registered in the user's own module, imported by the config
    (custom_imports), is one config line away."""
    (tmp_path / 'my_routes_for_test.py').write_text(
        'from mmvim.ops.routes import register_route\n\n\n'
        '@register_route()\n'
        'def test_bottom_up(h, w):\n'
        '    return [i * w + j for i in reversed(range(h)) '
        'for j in range(w)]\n')
    (tmp_path / 'cfg.py').write_text(
        "custom_imports = dict(imports=['mmvim', 'my_routes_for_test'])\n"
        "model = dict(type='Vim', embed_dims=16, depth=1, "
        "scan_route='test_bottom_up_rev')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cfg = Config.fromfile(str(tmp_path / 'cfg.py'))  # does the import
        from mmseg.registry import MODELS
        model = MODELS.build(cfg.model)
        assert model.scan_route == 'test_bottom_up_rev'
        assert route_order('test_bottom_up', 2, 2).tolist() == [2, 3, 0, 1]
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 48))[0].shape == \
                (1, 16, 2, 3)
    finally:
        ROUTES._module_dict.pop('test_bottom_up', None)
        sys.modules.pop('my_routes_for_test', None)
    assert register_route  # the public decorator the module used


ABLATIONS = sorted(glob.glob('configs/ablations/*.py'))


def test_ablation_configs_exist():
    names = {Path(p).name for p in ABLATIONS}
    for expected in ('upernet_vim_ti_snake_ade20k.py',
                     'upernet_vmamba_t_local4_ade20k.py',
                     'upernet_vmamba_t_hilbert_ade20k.py'):
        assert expected in names


@pytest.mark.parametrize('path', ABLATIONS)
def test_ablation_configs_change_only_the_route(path):
    """Each ablation equals its parent config but for the route, and its
    backbone builds (shrunk) and runs forward and backward."""
    cfg = Config.fromfile(path)
    base = Path(path).read_text().split("_base_ = ['")[1].split("'")[0]
    parent = Config.fromfile(str((Path(path).parent / base).resolve()))
    ours, theirs = cfg.to_dict(), parent.to_dict()
    key = 'scan_routes' if ours['model']['backbone']['type'] == 'VMamba' \
        else 'scan_route'
    route = ours['model']['backbone'].pop(key)
    assert key not in theirs['model']['backbone']
    assert ours == theirs
    bb = dict(cfg.model.backbone, init_cfg=None)
    if bb['type'] == 'VMamba':
        assert len(route) == 4  # official checkpoints still load
        bb.update(dims=8, depths=(1, 1, 1, 1))
    elif bb['type'] == 'Vim':
        bb.update(depth=2, embed_dims=16, img_size=64, out_indices=(0, 1))
    elif bb['type'] == 'MambaVision':
        bb.update(dim=8, depths=(1, 1, 2, 2), window_size=(8, 8, 4, 2))
    from mmseg.registry import MODELS
    model = MODELS.build(bb)
    outs = model(torch.randn(1, 3, 45, 77))
    sum(o.sum() for o in outs).backward()


# ---------------------------------------------------------------------------
# the tools of the ablation
def _run_tool(*args):
    import subprocess
    return subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, cwd=str(Path(__file__).parents[1]))


def test_draw_routes_writes_a_png_and_rejects_unknown_routes(tmp_path):
    out = tmp_path / 'r.png'
    res = _run_tool('tools/draw_routes.py', '--grid', '3', '5', '--routes',
                    'snake', 'local:window=2', 'hilbert_rev',
                    'atrous:step=2,transpose=1', '--out', str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    res = _run_tool('tools/draw_routes.py', '--routes', 'zigzag', '--out',
                    str(tmp_path / 'x.png'))
    assert res.returncode == 2 and 'unknown scan route' in res.stderr


def test_route_ablation_table_collects_a_run(tmp_path):
    import numpy as np
    run = tmp_path / 'vim_snake'
    (run / '20260101_000000' / 'vis_data').mkdir(parents=True)
    (run / 'cfg.py').write_text(
        "model = dict(backbone=dict(type='Vim', "
        "scan_route=dict(type='local', window=2)))\n")
    (run / 'test_metrics.json').write_text('{"aAcc": 95.0, "mIoU": 81.5}')
    (run / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
        '\n'.join(json.dumps(dict(iter=i, time=t)) for i, t in
                  ((20, 9.0), (60, 0.5), (80, 0.7), (100, 0.6))))
    erf = np.zeros((9, 9), np.float32)
    erf[4, :] = 1.0  # a horizontal stripe: spread along the columns only
    np.save(run / 'erf_out0.npy', erf)
    res = _run_tool('tools/route_ablation_table.py', str(run), '--out',
                    str(tmp_path / 't.json'), '--figure-dir', str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / 'erf_vim.png').read_bytes()[:4] == b'\x89PNG'
    assert '| vim_snake | Vim | local(window=2) | 81.50 | 95.00 | ' \
        '0.600 / 0.600 |' in res.stdout
    row = json.loads((tmp_path / 't.json').read_text())['rows'][0]
    assert row['time_logs'] == 3  # the warm-up interval is left out
    assert row['erf_out0']['row_spread'] == 0
    assert row['erf_out0']['col_spread'] == pytest.approx(
        float(np.arange(9).std()))


def test_route_benchmark_cases_run():
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tools.benchmark_routes import ROUTES as CASES_
    from tools.benchmark_routes import run_op
    for impl in ('flip/transpose (default)', 'gather, snake x4'):
        assert run_op(impl, 32, 'fwd+bwd', 'cpu', 1)['median_s'] > 0
    label, kwargs = CASES_['vmamba_t'][1]
    assert kwargs['scan_routes'][0] == 'snake'
    assert 'scan_route' in CASES_['vim_t'][1][1]
