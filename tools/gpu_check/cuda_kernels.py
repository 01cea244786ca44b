"""Phase 6, last and only if the budget leaves time: build mamba-ssm and
causal-conv1d for this GPU's architecture alone from the carried sdists
(mmvim/utils/kernel_sdists.py: pinned, sha256-checked, setup.py patched
to one ``-gencode``), then run the speed phase on the Vim-S calls at 512
in a fresh process, where ``cuda`` joins ``triton`` and ``torch``: the
row's ``triton_over_cuda_fwd_bwd`` is the Triton kernels' time over
mamba-ssm's (the target is at most 1.3).

The build takes minutes (about 3 for mamba-ssm on 16 cores, measured
elsewhere); the phase starts it only when ``BUILD_S`` seconds are left,
and otherwise says how to run it alone (``--phases cuda`` with a budget
of its own)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .imports import ROOT, kernel_sdists

#: what the build and the comparison need, seconds (both packages, sm_90
#: only, 16 cores; the estimate the phase plans with)
BUILD_S = 330
COMPARE_S = 60


def _imports(module: str) -> bool:
    code = f'import torch, {module}'
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True).returncode == 0


def run(args, phase, budget) -> None:
    import torch
    if not args.device.startswith('cuda'):
        phase.result.update(status='skipped', reason='no CUDA device: '
                            'nothing to build the kernels for')
        return
    sd = kernel_sdists()
    cap = torch.cuda.get_device_capability()
    need = [pkg for pkg, pin in sd.SDISTS.items()
            if not _imports(pin['module'])]
    if need and budget.left() < BUILD_S + COMPARE_S:
        phase.result.update(status='skipped', reason=(
            f'{budget.left():.0f} s left, the build needs about {BUILD_S} s:'
            ' run it alone (python tools/gpu_check.py --phases cuda '
            '--budget 480)'))
        return
    jobs = os.cpu_count() or 8
    for pkg in need:
        start = time.time()
        with tempfile.TemporaryDirectory() as work:
            source = sd.prepare_build(pkg, cap, Path(work))
            cmd, env = sd.build_command(pkg, source, cap, jobs)
            log = os.path.join(args.work_dir, f'build_{pkg}.log')
            with open(log, 'w') as f:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, **env), cwd=ROOT,
                                      timeout=max(budget.left(), 1))
        row = dict(build=pkg, arch=f'sm_{cap[0]}{cap[1]}',
                   seconds=time.time() - start, log=log,
                   status='ok' if proc.returncode == 0 else 'error')
        phase.add(row, f'built {pkg} in {row["seconds"]:.0f} s: '
                  f'{row["status"]}')
        if proc.returncode:
            return
    out = os.path.join(args.work_dir, 'cuda_compare.json')
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'gpu_check.py'),
           '--phases', 'speed', '--models', 'vim_s', '--sizes', '512',
           '--budget', str(int(budget.left())), '--out', out,
           '--work-dir', args.work_dir, '--repeats', str(args.repeats)]
    subprocess.run(cmd, cwd=ROOT, timeout=max(budget.left(), 1))
    with open(out) as f:
        speed = json.load(f)['phases']['speed']
    for row in speed.get('rows', []):
        phase.add(row, f'{row["op"]}: triton / cuda fwd+bwd '
                  f'{row.get("triton_over_cuda_fwd_bwd", "n/a")}')
