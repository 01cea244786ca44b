"""tools/gpu_check.py without a GPU: the dry run of every phase in
Triton's interpreter within its budget, the budget stopping a phase
cleanly, the import of mmvim without the OpenMMLab stack (the device
image), the bundle's run.sh, and the architecture patch of the real
sdists' setup.py that phase 6 builds with."""
import json
import os
import subprocess
import sys
import time

import pytest

from mmvim.utils.kernel_sdists import SDISTS, fetch_sdist, patch_cuda_archs
from tools import gpu_check
from tools.gpu_check import bundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_check(tmp_path, *argv, timeout=600):
    out = tmp_path / 'report.json'
    start = time.time()
    proc = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--device', 'cpu', '--tiny',
         '--out', str(out), '--work-dir', str(tmp_path / 'work'), *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={k: v for k, v in os.environ.items()
             if k not in ('TRITON_INTERPRET', 'MMVIM_TRITON_AUTOTUNE')})
    return proc, json.loads(out.read_text()), time.time() - start


@pytest.mark.slow
def test_dry_run_follows_the_phases_within_its_budget(tmp_path):
    """The documented dry run: every phase in order of value, the Triton
    kernels in the interpreter on the tiny models, finished within the
    budget (plus the interpreter's start), a report with each phase's
    status; phase 6 says why it did not build on CPU."""
    pytest.importorskip('triton')
    proc, report, seconds = _gpu_check(tmp_path, '--budget', '120')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 150, seconds
    ph = report['phases']
    assert list(ph) == list(gpu_check.PHASES)
    assert report['budget_s'] == 120 and report['seconds'] < 120
    assert not report['triton_autotune']
    # parity first: it is what the budget must never cut here
    assert ph['parity']['status'] == 'ok', ph['parity']
    rows = ph['parity']['rows']
    assert {r['model'] for r in rows} == {'vim_s', 'vmamba_t',
                                          'mambavision_t'}
    assert {r['dtype'] for r in rows} == {'float32', 'bfloat16'}
    assert {r['op'] for r in rows} == {'selective_scan', 'causal_conv1d'}
    # VMamba's reversed routes run as reverse flags in the kernel
    assert any(r.get('reverse') for r in rows if r['model'] == 'vmamba_t')
    for r in rows:
        assert max(r['out_rel_diff'], r['grad_rel_diff']) < r['tolerance']
    for name in gpu_check.PHASES[1:-1]:
        assert ph[name]['status'] in ('ok', 'timeout', 'skipped'), ph[name]
    if ph['speed']['status'] == 'ok':
        for r in ph['speed']['rows']:
            assert r['triton']['fwd_bwd_ms'] > 0 and 'fwd_ms' in r['torch']
    if ph['backbones']['status'] == 'ok':
        assert all(r['status'] == 'ok' for r in ph['backbones']['rows'])
    assert ph['cuda']['status'] == 'skipped'
    assert 'no CUDA device' in ph['cuda']['reason']
    assert 'parity' in proc.stdout and 'wrote' in proc.stdout


def test_budget_stops_a_phase_and_skips_the_rest(tmp_path):
    """A budget far shorter than the first phase (the speed phase timing
    500 calls of each kernel in the interpreter): it is interrupted with
    the rows it had (or, on a machine so loaded that the start ate the
    budget, skipped), the later phase is skipped, the report is complete
    before the budget ends and the command succeeds."""
    pytest.importorskip('triton')
    proc, report, seconds = _gpu_check(tmp_path, '--budget', '14',
                                       '--repeats', '500', '--phases',
                                       'speed', 'throughput')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ph = report['phases']
    assert list(ph) == ['speed', 'throughput']
    first = ph['speed']
    assert first['status'] in ('timeout', 'skipped'), first
    assert 'budget' in first['reason'] and 'rows' in first
    assert ph['throughput']['status'] == 'skipped'
    assert report['seconds'] < 14
    assert seconds < 60


def test_lite_import_needs_no_openmmlab(tmp_path):
    """What the device image allows: with mmseg and mmdet impossible to
    import (there, mmcv too: timm's DropPath stands in; here mmcv is
    installed, its compiled ops are never imported), mmvim's ops and
    backbones still import and compute the same function as the full
    import."""
    code = r'''
import sys
sys.path.insert(0, sys.argv[1])
for name in ('mmseg', 'mmdet'):
    sys.modules[name] = None  # import fails
import torch
from tools.gpu_check.imports import load_mmvim, import_mode
assert load_mmvim() == 'lite' and import_mode() == 'lite'
from tools.gpu_check.capture import build_backbone
torch.manual_seed(0)
m = build_backbone('vim_t', 32, tiny=True).eval()
torch.save([o.detach() for o in m(torch.ones(1, 3, 32, 32))], sys.argv[2])
print(sorted(k for k in sys.modules if (k.split('.')[0] in
             ('mmseg', 'mmdet') or k.startswith('mmcv.ops'))
             and sys.modules[k] is not None))
'''
    lite = tmp_path / 'lite.pt'
    proc = subprocess.run([sys.executable, '-c', code, ROOT, str(lite)],
                          capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == '[]'
    import torch

    from tools.gpu_check.capture import build_backbone
    torch.manual_seed(0)
    full = build_backbone('vim_t', 32, tiny=True).eval()
    ref = full(torch.ones(1, 3, 32, 32))
    for a, b in zip(torch.load(lite), ref):
        torch.testing.assert_close(a, b.detach())


def test_bundle_contents():
    """run.sh stays under the 2,000 characters a device command takes;
    wheels are pinned; what the bundle copies is the work tree's sources
    without the C++ extension."""
    assert len(bundle.RUN_SH) < 2000
    assert all('==' in w for w in bundle.WHEELS)
    names = {w.split('==')[0] for w in bundle.WHEELS}
    # what the image has, or cannot be carried (docs/triton.md)
    assert not names & {'torch', 'triton', 'numpy', 'timm', 'mmcv',
                        'mmcv-lite', 'mmsegmentation', 'mmdet',
                        'opencv-python'}
    files = bundle.sources()
    assert 'tools/gpu_check.py' in files and 'mmvim/ops/dispatch.py' in files
    assert not any(f.startswith('mmvim/csrc/') for f in files)


@pytest.mark.parametrize('pkg', list(SDISTS))
def test_build_restricted_to_one_architecture(pkg):
    """The real setup.py of each pinned sdist, patched for sm_90: one
    -gencode pair left, the file still compiles."""
    import tarfile
    pin = SDISTS[pkg]
    with tarfile.open(fetch_sdist(pkg)) as tar:
        text = tar.extractfile(f'{pkg}-{pin["version"]}/setup.py').read() \
            .decode()
    assert text.count('cc_flag.append("-gencode")') >= 5
    patched = patch_cuda_archs(text, (9, 0))
    assert patched.count('cc_flag.append("-gencode")') == 1
    assert '"arch=compute_90,code=sm_90"' in patched
    assert 'sm_80' not in patched and 'sm_121' not in patched
    compile(patched, 'setup.py', 'exec')
    with pytest.raises(ValueError, match='gencode'):
        patch_cuda_archs('print(1)\n', (9, 0))


def test_arguments(capsys):
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.parse_args([])
        assert 'no CUDA device' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--device', 'tpu'])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--device', 'cpu', '--phases', 'nope'])
    args = gpu_check.parse_args(['--device', 'cpu', '--budget', '60'])
    assert args.phases == list(gpu_check.PHASES) and args.budget == 60
