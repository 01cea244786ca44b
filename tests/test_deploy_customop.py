"""The opt-in ONNX export of the scan as mmvim's compiled kernel
(``--scan-op mmvim``): the onnxruntime custom operator
``mmvim.ai::SelectiveScan`` (mmvim/csrc/ort, mmvim/libmmvim_ort_ops.so) and
the files that use it (docs/deploy.md).

The operator is checked on its own against the float64 sequential reference
and against the cpu backend (the same kernels, so the same numbers) for
every B/C layout, option and instruction set; whole models of each family
export with it and match PyTorch; the portable default keeps to standard
operators; a file that needs the library without it gives one clear error.

The library is built by the install step with mmvim._ext: its tests fail
when it is missing, unless MMVIM_NO_EXT=1 (then they skip).
"""
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime', reason='the deploy extra is not '
                    'installed (pip install -e .[deploy])')

from test_deploy import TINY, TOL, rel_err, scan_case  # noqa: E402

from mmvim.deploy import ort_ops  # noqa: E402
from mmvim.ops.reference import selective_scan_loop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')

@pytest.fixture
def library():
    """The built library. Like mmvim._ext (tests/test_selective_scan_cpu.py)
    it is built by the install step, so its absence FAILS here (a silently
    skipped library would let CI pass with the fast path broken), unless
    MMVIM_NO_EXT=1 says it is meant to be absent."""
    path = ort_ops.library_path()
    if path is None:
        if os.environ.get('MMVIM_NO_EXT') == '1':
            pytest.skip('MMVIM_NO_EXT=1: the custom-op library was not built')
        pytest.fail('mmvim\'s onnxruntime custom-op library was not built: '
                    f'{ort_ops.LIBRARY_HINT}. Set MMVIM_NO_EXT=1 if it is '
                    'meant to be absent.')
    return path


needs_library = pytest.mark.usefixtures('library')


def _kernel_layout(mat):
    """B/C of a scan_case -> the operator's layout (docs of
    mmvim.ops.scan_export_kernel)."""
    if mat.dim() == 3:
        mat = mat.unsqueeze(1)
    return mat if mat.dim() == 2 else mat.transpose(-1, -2).contiguous()


def _op_model(case, reverse=()):
    """A one-node model: SelectiveScan on the case's present inputs, every
    dimension dynamic (the operator checks the shapes itself)."""
    from onnx import TensorProto, helper
    feeds, inputs, infos = {}, [], []
    for name in NAMES:
        value = case.get(name)
        if value is None:
            inputs.append('')
            continue
        if name in ('B', 'C'):
            value = _kernel_layout(value)
        feeds[name] = value.float().numpy()
        inputs.append(name)
        infos.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [f'{name}{i}' for i in
                                      range(value.dim())]))
    attrs = dict(delta_softplus=int(case['delta_softplus']))
    if reverse:
        attrs['reverse'] = [int(r) for r in reverse]
    node = helper.make_node(ort_ops.OP_TYPE, inputs, ['y'],
                            domain=ort_ops.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], 'scan', infos,
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid('', 18), helper.make_opsetid(ort_ops.DOMAIN, 1)])
    return model.SerializeToString(), feeds


def _session(model, threads=2):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    ort_ops.register_library(options)
    return ort.InferenceSession(model, options,
                                providers=['CPUExecutionProvider'])


def _library_isa() -> str:
    lib = ctypes.CDLL(ort_ops.library_path())
    lib.mmvim_ort_isa.restype = ctypes.c_char_p
    return lib.mmvim_ort_isa().decode()


def _cpu_backend(case, reverse=()):
    from mmvim.ops.selective_scan_cpu import selective_scan_cpu
    args = {k: v for k, v in case.items() if k != 'delta_softplus'}
    return selective_scan_cpu(**args,
                              delta_softplus=case['delta_softplus'],
                              reverse=tuple(bool(r) for r in reverse) or None)


def _reference(case, reverse=()):
    """float64 sequential loop, reversed blocks by flipping them."""
    c = {k: v.double() if torch.is_tensor(v) else v for k, v in case.items()}
    if not any(reverse):
        return selective_scan_loop(**c)
    from mmvim.ops.scan_layout import flip_bc, flip_blocks
    flags = tuple(bool(r) for r in reverse)
    for k in ('u', 'delta', 'z'):
        c[k] = flip_blocks(c[k], flags)
    c['B'], c['C'] = flip_bc(c['B'], flags), flip_bc(c['C'], flags)
    return flip_blocks(selective_scan_loop(**c), flags)


CASES = [
    (dict(), ()),
    (dict(bc='shared', with_z=False), ()),
    (dict(bc='constant', with_d=False), ()),
    (dict(length=1), ()),
    (dict(length=130, groups=4, dim=32), (0, 1, 0, 1)),
    (dict(n=1, groups=4, length=300, batch=1), (0, 0, 1, 1)),
    (dict(dim=40, n=16, length=70), (1, 0)),
]


@needs_library
@pytest.mark.parametrize('case,reverse', CASES)
def test_operator_equals_reference_and_cpu_backend(case, reverse):
    """Every B/C layout (grouped, shared, constant), optional inputs absent,
    lengths across kernel chunks, reversed blocks: within fp32 round-off of
    the float64 loop, and the cpu backend's numbers exactly (same
    kernels)."""
    c = scan_case(**case)
    model, feeds = _op_model(c, reverse)
    out = torch.from_numpy(_session(model).run(None, feeds)[0])
    assert rel_err(out, _reference(c, reverse)) < 1e-5
    if os.environ.get('MMVIM_SCAN_BACKEND', 'auto') in ('auto', 'cpu'):
        torch.testing.assert_close(out, _cpu_backend(c, reverse), rtol=0,
                                   atol=0)


@needs_library
def test_operator_without_softplus_and_bias():
    c = scan_case(length=33)
    c.update(delta=c['delta'].abs() * 0.1, delta_bias=None,
             delta_softplus=False)
    model, feeds = _op_model(c)
    out = _session(model, threads=1).run(None, feeds)[0]
    assert rel_err(out, _reference(c)) < 1e-5


@needs_library
def test_operator_runs_every_instruction_set(monkeypatch):
    """MMVIM_CPU_ISA picks the library's kernels as it picks mmvim._ext's;
    each gives the cpu backend's numbers for that instruction set."""
    from mmvim import _ext
    from mmvim.ops.selective_scan_cpu import supported_isas
    c = scan_case(dim=48, length=100, n=16, groups=2)
    model, feeds = _op_model(c, (0, 1))
    before = _ext.isa()
    try:
        for isa in supported_isas():
            monkeypatch.setenv('MMVIM_CPU_ISA', isa)
            session = _session(model)  # keeps the library loaded
            out = torch.from_numpy(session.run(None, feeds)[0])
            assert _library_isa() == isa
            _ext.set_isa(isa)
            torch.testing.assert_close(out, _cpu_backend(c, (0, 1)), rtol=0,
                                       atol=0)
    finally:
        _ext.set_isa(before)
    monkeypatch.setenv('MMVIM_CPU_ISA', 'sse9')
    with pytest.raises(Exception, match='MMVIM_CPU_ISA=sse9'):
        _session(model)


@needs_library
def test_operator_says_what_is_wrong_with_its_inputs():
    c = scan_case()
    model, feeds = _op_model(c)
    feeds['delta'] = feeds['delta'][:, :, :-1]
    with pytest.raises(Exception, match='SelectiveScan: delta must match u'):
        _session(model).run(None, feeds)


def test_torch_operator_is_selective_scan():
    """mmvim::selective_scan_kernel (what the exporter captures) computes
    selective_scan on the same inputs in its own B/C layout."""
    from mmvim.ops import selective_scan
    from mmvim.ops.scan_export_kernel import selective_scan_kernel
    c = scan_case(dim=32, groups=4)
    flags = (0, 1, 1, 0)
    out = selective_scan_kernel(
        c['u'], c['delta'], c['A'], _kernel_layout(c['B']),
        _kernel_layout(c['C']), c['D'], c['z'], c['delta_bias'], True,
        list(flags))
    ref = selective_scan(**c, reverse=tuple(map(bool, flags)))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# whole models
# ---------------------------------------------------------------------------
def _export(tmp_path, family, scan_op, dynamic=False, route=None,
            shape=(96, 128)):
    from mmvim.deploy import export_onnx, graph_module, load_model
    config, options = TINY[family]
    options = dict(options, **(route or {}))
    cfg, model = load_model(str(ROOT / config), cfg_options=options)
    module = graph_module(cfg, model)
    path = str(tmp_path / f'{family}_{scan_op}.onnx')
    info = export_onnx(module, torch.randn(1, 3, *shape), path, dynamic,
                       output_names=module.output_names(), scan_op=scan_op)
    return module, path, info


def _scan_nodes(path):
    import onnx
    graph = onnx.load(path).graph
    return [n for n in graph.node if n.domain == ort_ops.DOMAIN], \
        [n for n in graph.node if n.op_type == 'Loop']


@needs_library
@pytest.mark.parametrize('family,route,dynamic', [
    ('vim', None, True),
    ('vmamba', None, False),  # cross scan: grouped B/C, reversed routes
    ('mambavision', None, False),
    pytest.param('vmamba', {'model.backbone.scan_routes': (
        'snake', 'snake_column', 'snake_rev', 'snake_column_rev')}, False,
        marks=pytest.mark.slow),
])
def test_family_exports_with_the_custom_op_and_matches_pytorch(
        tmp_path, family, route, dynamic):
    """Each scan is one SelectiveScan node (no Loop); the file matches
    PyTorch (fp32, default scan backend) to 1e-4 of the logits' scale, at a
    second size and batch too when it is dynamic."""
    from mmvim.deploy import onnx_session, verify
    module, path, info = _export(tmp_path, family, 'mmvim', dynamic, route)
    assert info['custom_domains'] == [ort_ops.DOMAIN]
    scans, loops = _scan_nodes(path)
    assert scans and not loops
    if family == 'vmamba' and route is None:  # routes 2, 3 run backwards
        attrs = {a.name: list(a.ints) for a in scans[0].attribute}
        assert attrs['reverse'] == [0, 0, 1, 1]
    session = onnx_session(path)
    sizes = [(1, 3, 96, 128)] + ([(2, 3, 160, 64)] if dynamic else [])
    for size in sizes:
        assert verify(module, session, torch.randn(*size)) < TOL, size


def test_portable_export_has_no_custom_domain(tmp_path):
    """The default export stays standard ONNX: no mmvim.ai node or opset."""
    _, path, info = _export(tmp_path, 'vmamba', 'loop', shape=(64, 64))
    assert info['custom_domains'] == []
    assert ort_ops.custom_domains(path) == set()
    scans, loops = _scan_nodes(path)
    assert not scans and loops


def test_missing_library_gives_one_clear_error(tmp_path, monkeypatch):
    """A file that needs the operator, without the library: onnx_session
    and the tools' config step say what needs it and what to install."""
    from onnx import TensorProto, helper

    from mmvim.deploy import onnx_model_config, onnx_session
    from mmvim.utils import MMVimConfigError, load_config
    model, _ = _op_model(scan_case())
    path = tmp_path / 'scan.onnx'
    path.write_bytes(model)
    plain = tmp_path / 'plain.onnx'
    graph = helper.make_graph(
        [helper.make_node('Identity', ['x'], ['y'])], 'g',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2])])
    plain.write_bytes(helper.make_model(graph).SerializeToString())
    monkeypatch.setattr(ort_ops, 'library_path', lambda: None)
    with pytest.raises(ort_ops.CustomOpLibraryError) as err:
        onnx_session(str(path))
    message = str(err.value)
    for words in ('scan.onnx', 'mmvim.ai::SelectiveScan', '--scan-op mmvim',
                  'make install', 'C++ compiler'):
        assert words in message
    onnx_session(str(plain))  # a standard file does not need it
    cfg = load_config(str(ROOT / 'configs/demo_upernet_vim_shapes.py'))
    with pytest.raises(MMVimConfigError, match='make install'):
        onnx_model_config(cfg, str(path))


@pytest.mark.slow
def test_tools_without_the_library_exit_with_one_line(tmp_path):
    """tools/test.py on such a file when the library is missing: exit 2,
    one line, no traceback."""
    model, _ = _op_model(scan_case())
    path = tmp_path / 'scan.onnx'
    path.write_bytes(model)
    code = ('import runpy, sys; import mmvim.deploy.ort_ops as o; '
            'o.library_path = lambda: None; '
            f'sys.argv = ["tools/test.py", "configs/demo_upernet_vim_shapes.'
            f'py", {str(path)!r}]; '
            'runpy.run_path("tools/test.py", run_name="__main__")')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error')]
    assert len(lines) == 1 and 'make install' in lines[0], proc.stderr
    assert 'Traceback' not in proc.stderr


@needs_library
def test_library_is_plain_and_loads_without_torch():
    """The library links neither torch nor Python nor onnxruntime (it can
    ship next to onnxruntime alone) and exports the registration entry."""
    lib = ort_ops.library_path()
    assert Path(lib).name == ort_ops.LIBRARY_NAME
    code = ('import ctypes, sys; ctypes.CDLL(sys.argv[1]).RegisterCustomOps;'
            " assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, '-S', '-c', code, lib],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if sys.platform.startswith('linux'):
        needed = subprocess.run(['ldd', lib], capture_output=True,
                                text=True).stdout
        assert not any(name in needed for name in
                       ('torch', 'c10', 'python', 'onnxruntime')), needed


@needs_library
def test_export_tool_writes_and_verifies_a_custom_op_file(tmp_path):
    out = tmp_path / 'demo.onnx'
    proc = subprocess.run(
        [sys.executable, 'tools/deploy/export_onnx.py',
         'configs/demo_upernet_vmamba_shapes.py', '--shape', '64', '64',
         '--out', str(out), '--verify', '--scan-op', 'mmvim'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'custom operators of mmvim.ai' in proc.stdout
    err = float(proc.stdout.split('worst relative error ')[1].split()[0])
    assert err < TOL
    assert ort_ops.custom_domains(str(out)) == {ort_ops.DOMAIN}
    assert np.isfinite(err)


def test_sessions_do_not_spin_by_default():
    """onnx_session's settings (docs/deploy.md): all graph optimisations,
    idle intra-op threads sleep instead of spinning."""
    import onnxruntime as ort

    from mmvim.deploy.export import session_options
    options = session_options(2)
    assert options.get_session_config_entry(
        'session.intra_op.allow_spinning') == '0'
    assert options.graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 2
    assert session_options(spinning=True).get_session_config_entry(
        'session.intra_op.allow_spinning') == '1'
