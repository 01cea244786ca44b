"""tools/benchmark.py: the exponent fit, the sweep bookkeeping, the plot and
single cases for presets, baselines and configs (timings are not asserted:
they belong in the benchmark JSON)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import benchmark  # noqa: E402


def test_exponent_fit_recovers_power_laws():
    sizes = [224, 512, 768, 1024, 1248]
    quad = [(s, 3e-9 * benchmark.tokens(s) ** 2) for s in sizes]
    lin = [(s, 0.01 * benchmark.tokens(s) + 0.0) for s in sizes]
    assert math.isclose(benchmark.fit_exponent(quad), 2.0, rel_tol=1e-9)
    assert math.isclose(benchmark.fit_exponent(lin), 1.0, rel_tol=1e-9)
    assert benchmark.fit_exponent(quad[:1]) is None


def test_scaling_groups_cases_and_uses_high_res_points():
    results = []
    for s in (224, 512, 1024):
        t = benchmark.tokens(s)
        # quadratic only from 512 on: overall exponent < 2, high-res == 2
        y = 1.0 if s == 224 else 1e-6 * t ** 2
        results.append(dict(model='m', mode='fwd', batch_size=1,
                            scan='default', img_size=s, median_s=y,
                            peak_extra_mb=10 * t))
    results.append(dict(model='m', mode='fwd', batch_size=1, scan='default',
                        img_size=2048, skipped='too slow'))
    (row, ) = benchmark.scaling(results)
    assert row['sizes'] == [224, 512, 1024]
    assert math.isclose(row['time_exponent_high_res'], 2.0, rel_tol=1e-9)
    assert row['time_exponent'] < 2.0
    assert math.isclose(row['memory_exponent'], 1.0, rel_tol=1e-9)


def test_plot_writes_png(tmp_path):
    results = [dict(model=m, mode=mode, batch_size=1, scan='default',
                    img_size=s, median_s=s / 100, images_per_s=100 / s,
                    peak_extra_mb=s) for m in ('vim_t', 'deit_t')
               for mode in ('fwd', 'fwd+bwd') for s in (224, 512)]
    path = benchmark.plot(results, str(tmp_path / 'p.png'), 'title')
    data = Path(path).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000


@pytest.mark.parametrize('target', ['deit_t', 'swin_t', 'vim_t'])
def test_preset_case_runs(target):
    res = benchmark.run_case(target, 64, 1, 'fwd+bwd', 'cpu', False, None, 1)
    assert res['median_s'] > 0 and res['images_per_s'] > 0
    assert res['params_m'] > 5


@pytest.mark.parametrize('backend', ['torch', 'cpu'])
def test_scan_share_is_measured(backend, monkeypatch):
    """The scan's share of a Vim call, with either CPU scan backend; the
    timers are removed afterwards."""
    from mmvim.ops.selective_scan import _SelectiveScanTorch
    if backend == 'cpu':
        pytest.importorskip('mmvim._ext')  # its absence fails elsewhere
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', backend)
    forward = _SelectiveScanTorch.__dict__['forward']
    res = benchmark.run_case('vim_t', 64, 1, 'fwd+bwd', 'cpu', False, None,
                             1, True)
    assert 0 < res['scan_s'] < res['scan_timed_call_s']
    assert 0 < res['scan_share'] < 1
    assert _SelectiveScanTorch.__dict__['forward'] is forward


def test_config_case_runs_whole_detector():
    model, step = benchmark.build_case(
        'configs/demo_mask_rcnn_vmamba_shapes.py', 64, 2, 'fwd+bwd', 'cpu',
        None)
    step()  # loss of RPN + RoI heads, backward through the backbone
    grads = [p.grad for p in model.parameters()]
    assert all(g is None for g in grads)  # zeroed after the step
    model, step = benchmark.build_case(
        'configs/demo_upernet_vim_shapes.py', 64, 1, 'fwd', 'cpu', None)
    with torch.no_grad():
        step()


def test_unknown_model_is_a_clear_error():
    proc = subprocess.run([sys.executable, 'tools/benchmark.py', '--models',
                           'vim_xl'], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "'vim_xl' is neither a preset" in proc.stderr


def test_mmseg_preset_builds_whatever_default_scope_is_left_behind():
    """A baseline from mmseg's registry builds after an mmdet run has set
    mmengine's default scope to mmdet (mmengine builds in the default
    scope's registry, where mmseg's VisionTransformer does not exist)."""
    from mmengine.registry import DefaultScope

    from mmvim.utils.presets import build_preset
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = build_preset('deit_t')
        assert DefaultScope.get_current_instance().scope_name == 'mmdet'
    assert type(model).__module__.startswith('mmseg.')
