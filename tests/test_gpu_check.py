"""tools/gpu_check.py without a GPU: the CPU smoke run of every phase, the
JSON it writes, the kernel build decisions and the architecture patch of
the real sdists' setup.py."""
import json

import pytest
import torch

from mmvim.utils import load_config
from mmvim.utils.kernel_sdists import SDISTS, fetch_sdist, patch_cuda_archs
from tools import gpu_check


def test_cpu_smoke_run_writes_every_phase(tmp_path, capsys):
    out = tmp_path / 'gpu_check_cpu.json'
    rc = gpu_check.main([
        '--device', 'cpu', '--tiny', '--out', str(out),
        '--work-dir', str(tmp_path / 'work'),
        '--parity-tests', 'tests/test_cuda_kernels_gpu.py',
        '--configs', 'configs/demo_upernet_vim_shapes.py',
        'configs/demo_mask_rcnn_vmamba_shapes.py'])
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert list(report['phases']) == list(gpu_check.PHASES)
    for key in ('command', 'date', 'device', 'torch', 'seconds'):
        assert key in report
    ph = report['phases']
    assert ph['setup']['status'] == 'ok'
    after = ph['setup']['after']
    assert after['torch'] == torch.__version__ and not after['cuda_available']
    assert set(after['kernels']) == set(SDISTS)
    # no GPU: the gpu tests are collected and skipped, not run
    assert ph['parity']['status'] == 'skipped'
    assert ph['parity']['skipped'] == ph['parity']['tests'] > 0
    rows = ph['backbones']['results']
    assert [r['model'] for r in rows] == list(gpu_check.TINY_BACKBONES)
    for r in rows:
        assert r['status'] == 'ok' and r['backends'] == ['cpu', 'torch']
        # bf16 autocast: the two scans agree to fp32 round-off, which may
        # flip the bf16 rounding of a scan output or gradient element (one
        # bf16 ulp, 2^-8, of that element); a glue error is off by O(1)
        assert r['output_rel_diff'] < 2 ** -8, r
        assert r['grad_rel_diff'] < 2 ** -8, r
    trains = ph['train']['results']
    assert [r['config'] for r in trains] == ['demo_upernet_vim_shapes',
                                             'demo_mask_rcnn_vmamba_shapes']
    for r in trains:
        assert r['status'] == 'ok', r
        assert r['seconds'] > 0 and r['img_size'] == [64, 64]
    vd = ph['vim_vs_deit']
    assert vd['status'] == 'ok' and vd['fps_ratio'] > 0
    assert {r['model'] for r in vd['results']} == {'vim_t', 'deit_t'}
    tp = ph['throughput']['results']
    assert [r['model'] for r in tp] == list(gpu_check.OFFICIAL_TP)
    assert all(r['ratio_to_official'] > 0 for r in tp)
    # the table names every check
    for name in ('setup', 'parity', 'backbones:vim_t',
                 'train:demo_upernet_vim_shapes', 'vim_vs_deit',
                 'throughput:mambavision_t'):
        assert name in printed


def _info(cuda=True, kernels_missing=(), mmvim=None):
    return dict(cuda_available=cuda, mmvim_import=mmvim,
                kernels={k: ('ImportError' if k in kernels_missing else None)
                         for k in SDISTS})


def test_setup_plan():
    plan = gpu_check.plan_setup
    assert plan(_info()) == []
    built = plan(_info(kernels_missing=('mamba_ssm', 'causal_conv1d')))
    assert [(a, w) for a, w, _ in built] == [('build', 'causal_conv1d'),
                                            ('build', 'mamba_ssm')]
    assert built[1][2].endswith('mamba_ssm-2.3.2.post1.tar.gz')
    no_gpu = plan(_info(cuda=False, kernels_missing=('mamba_ssm',)))
    assert [(a, w) for a, w, _ in no_gpu] == [('missing', 'mamba-ssm')]
    assert plan(_info(kernels_missing=('mamba_ssm',)), no_build=True)[0][:2] \
        == ('missing', 'mamba-ssm')
    stack = plan(_info(mmvim="ModuleNotFoundError: No module named 'mmseg'"))
    assert stack[0][0] == 'missing' and 'make install' in stack[0][2]
    assert plan(_info(mmvim='x'), wheel_dir='/w')[0] == (
        'install-stack', 'openmmlab', '/w')


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


def test_train_sizes_of_the_configs():
    assert gpu_check.train_size(load_config(
        'configs/upernet_vim_ti_ade20k.py')) == (512, 512)
    # keep-ratio resize to (1333, 800), padded to a multiple of 32
    assert gpu_check.train_size(load_config(
        'configs/mask_rcnn_vmamba_t_fpn_1x_coco.py')) == (800, 1344)
    assert gpu_check.train_size(load_config(
        'configs/cascade_mask_rcnn_vim_ti_vitdet_coco.py')) == (1024, 1024)


def test_arguments(capsys):
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.parse_args([])
        assert 'no CUDA device' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--device', 'tpu'])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--device', 'cpu', '--phases', 'nope'])
    args = gpu_check.parse_args(['--device', 'cpu'])
    assert args.phases == list(gpu_check.PHASES) and not args.tiny
