"""python -m mmvim.env: what a user pastes into a bug report."""
import os
import subprocess
import sys

import torch

from mmvim.env import collect_env, env_report, op_backends
from mmvim.ops import dispatch


def test_report_runs_and_names_versions_devices_and_ops():
    proc = subprocess.run([sys.executable, '-m', 'mmvim.env'],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for name in ('torch', 'mmengine', 'mmcv', 'mmsegmentation', 'mmdet',
                 'mamba-ssm', 'causal-conv1d', 'triton', 'CUDA available'):
        assert f'  {name} ' in out, name
    assert torch.__version__ in out
    assert 'compiled ops import' in out  # full mmcv in this environment
    for op in dispatch.KERNELS:
        assert f'  {op}: usable backends: ' in out
    if not torch.cuda.is_available():
        # every unusable backend comes with its reason and its fix
        assert out.count('    cuda   no') == len(dispatch.KERNELS)
        assert 'Fix: install the CUDA extras' in out
    else:
        assert 'GPU 0' in out
    # what auto picks for each device, and why
    for op in dispatch.KERNELS:
        for device in ('CPU', 'CUDA'):
            backend, why = dispatch.auto_backend(op, device.lower())
            assert f'    auto on {device} tensors -> {backend}: {why}' in out


def test_versions_of_kernel_packages_come_from_metadata():
    env = collect_env()
    assert env['mmengine'] == '0.10.7'
    # never imported (mamba_ssm fails to import without CUDA)
    assert 'mamba_ssm' not in sys.modules or torch.cuda.is_available()
    assert env['CUDA available'] == str(torch.cuda.is_available())


def test_a_registered_kernel_shows_up_with_its_state(monkeypatch):
    """The report is built from the dispatch table: a cpu kernel registered
    there (mmvim's C++ extension) is listed without touching mmvim.env."""
    table = {op: dict(kerns) for op, kerns in dispatch.KERNELS.items()}
    monkeypatch.setattr(dispatch, 'KERNELS', table)
    dispatch.register_kernel('selective_scan', 'cpu', dispatch.LazyKernel(
        'mmvim._no_such_extension', 'scan', 'build it: pip install -e .'))
    dispatch.register_kernel('causal_conv1d', 'cpu', dispatch.LazyKernel(
        'math', 'sqrt', 'unused'))
    rows = {op: {b: (ok, note) for b, ok, note in r}
            for op, r in op_backends(cuda_available=False).items()}
    ok, note = rows['selective_scan']['cpu']
    assert not ok and 'mmvim._no_such_extension does not import' in note
    assert 'Fix: build it: pip install -e .' in note
    assert rows['causal_conv1d']['cpu'] == (True, 'math.sqrt')
    assert rows['causal_conv1d']['torch'][0]
    report = env_report()
    assert 'causal_conv1d: usable backends: cpu, torch (auto: CPU tensors ' \
        '-> cpu' in report
    assert 'selective_scan: usable backends: torch (auto: CPU tensors -> ' \
        'torch' in report
