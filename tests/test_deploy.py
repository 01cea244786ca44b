"""ONNX export (mmvim.deploy, tools/deploy/export_onnx.py) and inference
with the exported files in onnxruntime (tools/test.py, tools/infer.py).

The scan's export formulation is checked against the float64 sequential
reference, in torch and as a standalone ONNX graph in onnxruntime; one tiny
model per backbone family exports with dynamic batch / height / width and
matches PyTorch at two sizes; the slow tests export the trained demo model
and compare its mIoU and overlays with the checkpoint's. Detectors:
tests/test_deploy_detectors.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime', reason='the deploy extra is not '
                    'installed (pip install -e .[deploy])')

from mmvim.ops import selective_scan, selective_scan_torch  # noqa: E402
from mmvim.ops.reference import selective_scan_loop  # noqa: E402
from mmvim.ops.scan_export import (  # noqa: E402
    selective_scan_export,
    softplus_export,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = 'configs/demo_upernet_vim_shapes.py'
TOL = 1e-4  # worst relative error of a whole model (docs/deploy.md)

# tiny models of each family, as --cfg-options of the real UperNet configs
_HEADS = {'model.decode_head.channels': 16, 'model.decode_head.num_classes':
          5, 'model.auxiliary_head.channels': 8,
          'model.auxiliary_head.num_classes': 5}
TINY = {
    'vim': ('configs/upernet_vim_ti_ade20k.py', dict(
        _HEADS, **{'model.backbone.embed_dims': 32, 'model.backbone.depth': 2,
                   'model.backbone.img_size': 64,
                   'model.backbone.out_indices': (0, 1, 1, 1),
                   'model.neck.embed_dim': 32,
                   'model.decode_head.in_channels': [32] * 4,
                   'model.auxiliary_head.in_channels': 32})),
    'vmamba': ('configs/upernet_vmamba_t_ade20k.py', dict(
        _HEADS, **{'model.backbone.dims': 16,
                   'model.backbone.depths': (1, 1, 1, 1),
                   'model.decode_head.in_channels': [16, 32, 64, 128],
                   'model.auxiliary_head.in_channels': 64})),
    # windows that do not divide the maps: the padding is in the graph
    'mambavision': ('configs/upernet_mambavision_t_ade20k.py', dict(
        _HEADS, **{'model.backbone.dim': 16, 'model.backbone.in_dim': 8,
                   'model.backbone.depths': (1, 1, 2, 2),
                   'model.backbone.window_size': (8, 8, 6, 3),
                   'model.decode_head.in_channels': [16, 32, 64, 128],
                   'model.auxiliary_head.in_channels': 64})),
}


def rel_err(out, ref) -> float:
    out, ref = torch.as_tensor(out).double(), torch.as_tensor(ref).double()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def run_tool(*args, timeout=900):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))


# ---------------------------------------------------------------------------
# the scan's export formulation
# ---------------------------------------------------------------------------
def scan_case(batch=2, dim=24, length=45, n=4, bc='grouped', groups=2,
              with_z=True, with_d=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)

    shape = dict(grouped=(batch, groups, n, length),
                 shared=(batch, n, length), constant=(dim, n))[bc]
    return dict(u=r(batch, dim, length), delta=r(batch, dim, length) - 1,
                A=-torch.exp(r(dim, n)), B=r(*shape), C=r(*shape),
                D=r(dim) if with_d else None,
                z=r(batch, dim, length) if with_z else None,
                delta_bias=r(dim) * 0.5, delta_softplus=True)


@pytest.mark.parametrize('case', [
    dict(), dict(bc='shared', with_z=False), dict(bc='constant',
                                                  with_d=False),
    dict(length=1), dict(length=64, groups=4, dim=32),
    dict(n=1, groups=4, length=300)])
@pytest.mark.parametrize('chunk', [1, 16, 7])
def test_export_scan_equals_the_sequential_reference(case, chunk):
    """The chunked formulation (padding, per-chunk element-wise work,
    step-by-step state) keeps the fp32 error of the torch backend against
    the float64 sequential loop."""
    args = scan_case(**case)
    ref = selective_scan_loop(**{k: v.double() if torch.is_tensor(v) else v
                                 for k, v in args.items()})
    ours = selective_scan_export(**args, chunk=chunk)
    backend = selective_scan_torch(**args)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert rel_err(ours, ref) <= max(4 * rel_err(backend, ref), 2e-7)


def test_export_scan_reverse_blocks_as_the_backends():
    args = scan_case(dim=32, groups=4)
    flags = (False, True, False, True)
    ref = selective_scan(**args, reverse=flags)
    assert rel_err(selective_scan_export(**args, reverse=flags), ref) < 1e-6


def test_export_softplus_is_accurate_everywhere():
    """relu + log1p form: as accurate as torch's softplus for any input
    (ONNX's Softplus, log(exp(x) + 1), is 0 below x = -17 and inf above
    88)."""
    x = torch.cat((torch.linspace(-80, 100, 20001), torch.randn(5000) * 5))
    ref = torch.nn.functional.softplus(x.double())
    err = ((softplus_export(x).double() - ref).abs() / ref).max().item()
    torch_err = ((torch.nn.functional.softplus(x).double() - ref).abs()
                 / ref).max().item()
    assert err < max(4 * torch_err, 1e-6)


def _scan_model(case, chunk):
    """A standalone ONNX model of one scan (dynamic batch and length)."""
    import onnx_ir as ir

    from mmvim.deploy.onnx_scan import _Nodes, build_ssm_scan
    from mmvim.ops.scan_export import _grouped
    batch, dim, length = case['u'].shape
    groups = case['B'].shape[1]
    f32 = ir.TensorType(ir.DataType.FLOAT)

    def value(name, *shape):
        return ir.Value(name=name, type=f32, shape=ir.Shape(shape))

    inputs = [value('u', 'b', dim, 'L'), value('delta', 'b', dim, 'L'),
              value('A', dim, case['A'].shape[1]),
              value('B', 'b', groups, case['A'].shape[1], 'L'),
              value('C', 'b', groups, case['A'].shape[1], 'L'),
              value('D', dim), value('z', 'b', dim, 'L'),
              value('bias', dim)]
    g = _Nodes(18, prefix='scan')
    y = build_ssm_scan(g, *inputs, softplus=True, chunk=chunk)
    y.type, y.shape = f32, ir.Shape(['b', dim, 'L'])
    model = ir.Model(ir.Graph(inputs, [y], nodes=g.nodes, name='scan',
                              opset_imports={'': 18}), ir_version=10)
    feeds = lambda c: dict(  # noqa: E731
        u=c['u'], delta=c['delta'], A=c['A'], D=c['D'], z=c['z'],
        bias=c['delta_bias'],
        B=_grouped(c['B'], groups, batch, c['u'].shape[2]),
        C=_grouped(c['C'], groups, batch, c['u'].shape[2]))
    return ir.to_proto(model), feeds


def test_onnx_scan_graph_runs_in_onnxruntime_for_any_length():
    """build_ssm_scan's graph (standard ops only) in onnxruntime equals the
    float64 reference; one graph serves every batch and length."""
    import onnx
    import onnxruntime as ort
    case = scan_case(length=50)
    proto, feeds = _scan_model(case, chunk=16)
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} == {''}
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    for length, batch in ((50, 2), (16, 1), (1, 3), (333, 1)):
        c = scan_case(length=length, batch=batch, seed=length)
        out = session.run(None, {k: v.numpy() for k, v in feeds(c).items()})
        ref = selective_scan_loop(**{k: v.double() if torch.is_tensor(v)
                                     else v for k, v in c.items()})
        assert out[0].shape == tuple(ref.shape)
        assert rel_err(out[0], ref) < 1e-6


def test_import_mmvim_does_not_import_the_deploy_packages():
    code = ('import sys, mmvim, mmvim.deploy; '
            "bad = [m for m in ('onnx', 'onnxruntime', 'onnxscript', "
            "'onnx_ir') if m in sys.modules]; "
            'assert not bad, bad')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------
# whole models
# ---------------------------------------------------------------------------
def _export(tmp_path, family, dynamic, shape=(96, 128), route=None):
    from mmvim.deploy import export_onnx, graph_module, load_model
    config, options = TINY[family]
    options = dict(options)
    if route is not None:
        options.update(route)
    cfg, model = load_model(str(ROOT / config), cfg_options=options)
    module = graph_module(cfg, model)
    path = str(tmp_path / f'{family}.onnx')
    info = export_onnx(module, torch.randn(1, 3, *shape), path, dynamic,
                       output_names=module.output_names())
    return module, path, info


# Vim in the fast suite; each export costs 30-70 s on 2 cores
@pytest.mark.parametrize('family', [
    'vim', pytest.param('vmamba', marks=pytest.mark.slow),
    pytest.param('mambavision', marks=pytest.mark.slow)])
def test_family_exports_dynamic_and_matches_pytorch(tmp_path, family):
    """One file, dynamic batch / height / width, standard operators only,
    equal to PyTorch at the export size and at another size and batch
    (Vim's position-embedding resize, MambaVision's window padding and
    UperNet's pyramid pooling in the graph)."""
    import onnx

    from mmvim.deploy import onnx_session, verify
    module, path, info = _export(tmp_path, family, dynamic=True)
    proto = onnx.load(path)
    shape = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in shape][1] == 3
    assert all(d.dim_param for i, d in enumerate(shape) if i != 1)
    session = onnx_session(path)
    for size in ((1, 3, 96, 128), (2, 3, 160, 64)):
        x = torch.randn(*size)
        assert verify(module, session, x) < TOL, size
        assert session.run(None, {'inputs': x.numpy()})[0].shape == \
            (size[0], 5) + size[2:]


@pytest.mark.slow
@pytest.mark.parametrize('family,route', [
    ('vim', {'model.backbone.scan_route': 'hilbert'}),
    ('vmamba', {'model.backbone.scan_routes': (
        'snake', 'snake_column', 'snake_rev', 'snake_column_rev')}),
    ('mambavision', {'model.backbone.scan_route': 'snake'})])
def test_non_default_scan_routes_export(tmp_path, family, route):
    """A route's gather order is a constant of the (static) graph."""
    from mmvim.deploy import onnx_session, verify
    module, path, _ = _export(tmp_path, family, dynamic=False, route=route)
    assert verify(module, onnx_session(path), torch.randn(1, 3, 96, 128)) \
        < TOL


@pytest.mark.slow
def test_node_count_does_not_grow_with_the_input(tmp_path):
    """The scan is a Loop: the same graph for 64x64 and 256x256 inputs
    (sequence lengths 16 and 256)."""
    counts = [_export(tmp_path, 'vim', False, shape=(s, s))[2]['nodes']
              for s in (64, 256)]
    assert counts[0] == counts[1]


# ---------------------------------------------------------------------------
# the tools
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_export_tool_reports_a_missing_checkpoint(tmp_path):
    proc = run_tool('tools/deploy/export_onnx.py', DEMO_CONFIG,
                    tmp_path / 'none.pth', '--shape', 64, 64, '--out',
                    tmp_path / 'x.onnx')
    assert proc.returncode == 2
    assert 'does not exist' in proc.stderr and 'Traceback' not in \
        proc.stderr


@pytest.fixture(scope='module')
def trained_demo(tmp_path_factory):
    """The demo config trained briefly (20 iterations of 4 images, from
    scratch), its checkpoint exported to ONNX at the test pipeline's
    128x128."""
    from mmvim.datasets import make_demo_segmentation
    root = tmp_path_factory.mktemp('deploy_demo')
    data = make_demo_segmentation(str(root / 'data'), 24, 12, 128)
    common = ['--cfg-options', f'train_dataloader.dataset.data_root={data}',
              f'val_dataloader.dataset.data_root={data}',
              f'test_dataloader.dataset.data_root={data}',
              'train_dataloader.num_workers=0',
              'train_dataloader.persistent_workers=False',
              'val_dataloader.num_workers=0',
              'val_dataloader.persistent_workers=False']
    work = root / 'work'
    proc = run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', work,
                    *common, 'train_cfg.max_iters=20',
                    'train_dataloader.batch_size=4',
                    'train_cfg.val_interval=1000',
                    'default_hooks.checkpoint.interval=20')
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = work / 'iter_20.pth'
    onnx_file = root / 'demo.onnx'
    proc = run_tool('tools/deploy/export_onnx.py', DEMO_CONFIG, ckpt,
                    '--shape', 128, 128, '--out', onnx_file, '--verify')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'worst relative error' in proc.stdout
    files = dict(root=root, data=data, ckpt=ckpt, onnx=onnx_file,
                 common=common)
    from mmvim.deploy.ort_ops import library_path
    if library_path() is not None:  # the opt-in custom-op file as well
        files['onnx_mmvim'] = root / 'demo_mmvim.onnx'
        proc = run_tool('tools/deploy/export_onnx.py', DEMO_CONFIG, ckpt,
                        '--shape', 128, 128, '--out', files['onnx_mmvim'],
                        '--scan-op', 'mmvim')
        assert proc.returncode == 0, proc.stderr[-3000:]
    return files


def _onnx_file(trained_demo, key):
    if key not in trained_demo:
        pytest.skip('mmvim\'s onnxruntime custom-op library was not built')
    return key


def _test_metrics(trained_demo, key):
    out = trained_demo['root'] / f'{key}.json'
    proc = run_tool('tools/test.py', DEMO_CONFIG, trained_demo[key],
                    '--work-dir', trained_demo['root'] / f'test_{key}',
                    '--out', out, *trained_demo['common'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _inferred(trained_demo, key):
    """tools/infer.py's label maps for the validation images."""
    from PIL import Image
    images = os.path.join(trained_demo['data'], 'images', 'validation')
    out = trained_demo['root'] / f'infer_{key}'
    backend = 'pytorch' if key == 'ckpt' else 'onnxruntime'
    proc = run_tool('tools/infer.py', DEMO_CONFIG, trained_demo[key],
                    images, '--out-dir', out, '--device', 'cpu',
                    '--backend', backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((out / 'vis').glob('*'))) == 12
    return {p.name: np.array(Image.open(p)) for p in
            sorted((out / 'pred').glob('*.png'))}


@pytest.fixture(scope='module')
def checkpoint_results(trained_demo):
    """What tools/test.py and tools/infer.py give with the checkpoint."""
    return dict(metrics=_test_metrics(trained_demo, 'ckpt'),
                preds=_inferred(trained_demo, 'ckpt'))


@pytest.mark.slow
@pytest.mark.parametrize('onnx_key', ['onnx', 'onnx_mmvim'])
def test_exported_demo_gives_the_checkpoints_miou(trained_demo,
                                                  checkpoint_results,
                                                  onnx_key):
    ckpt = checkpoint_results['metrics']
    metrics = _test_metrics(trained_demo, _onnx_file(trained_demo, onnx_key))
    for name in ('mIoU', 'aAcc', 'mAcc'):
        assert abs(ckpt[name] - metrics[name]) <= 0.01, (ckpt, metrics)


@pytest.mark.slow
@pytest.mark.parametrize('onnx_key', ['onnx', 'onnx_mmvim'])
def test_infer_with_onnxruntime_writes_the_same_overlays(trained_demo,
                                                         checkpoint_results,
                                                         onnx_key):
    preds = dict(pytorch=checkpoint_results['preds'],
                 onnxruntime=_inferred(trained_demo,
                                       _onnx_file(trained_demo, onnx_key)))
    assert preds['pytorch'].keys() == preds['onnxruntime'].keys()
    same = [np.mean(preds['pytorch'][k] == preds['onnxruntime'][k])
            for k in preds['pytorch']]
    assert min(same) > 0.999  # argmax ties aside, the same label maps
