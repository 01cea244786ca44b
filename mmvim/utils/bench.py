"""Helpers shared by the benchmark scripts (tools/benchmark*.py)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional


def measure(call: Callable[[], None], repeats: int, device: str) -> dict:
    """Median time of ``repeats`` calls after one warm-up, and peak memory.

    Peak memory is the extra over what was allocated before the warm-up:
    ``torch.cuda.max_memory_allocated`` on CUDA, the process's resident
    high-water mark (ru_maxrss) on CPU, so run each case in a fresh process
    (:func:`spawn`) for CPU numbers that mean something.
    """
    import resource

    import torch
    is_cuda = device.startswith('cuda')

    def timed() -> float:
        start = time.perf_counter()
        call()
        if is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    if is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed()  # warm-up (and the first peak)
    times = [timed() for _ in range(repeats)]
    if is_cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 \
            - base
    return dict(median_s=statistics.median(times), times_s=times,
                peak_extra_mb=max(peak, 0) / 2**20,
                threads=torch.get_num_threads())


def spawn(module: str, func: str, *args, env: Optional[dict] = None) -> dict:
    """Run ``module.func(*args)`` (JSON-able args and result) in a fresh
    Python process from the repository root; errors come back as a dict."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    code = (f'import json, sys; sys.path.insert(0, {root!r}); '
            f'from {module} import {func}; '
            f'print("RESULT" + json.dumps({func}(*json.loads(sys.argv[1]))))')
    proc = subprocess.run([sys.executable, '-c', code, json.dumps(args)],
                          capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    for line in proc.stdout.splitlines():
        if line.startswith('RESULT'):
            return json.loads(line[len('RESULT'):])
    return dict(error=(proc.stderr.strip().splitlines() or ['no output'])[-1])


def environment(device: str) -> dict:
    """Machine facts stored with every benchmark JSON."""
    import torch
    return dict(
        command='python ' + ' '.join(sys.argv),
        date=time.strftime('%Y-%m-%d %H:%M:%S'),
        device=device,
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        gpu=(torch.cuda.get_device_name() if device.startswith('cuda')
             else None))


def write_report(device: str, results: list, name: str,
                 out: Optional[str] = None, **extra) -> str:
    """Write ``results`` with :func:`environment` facts as JSON; the default
    path is docs/benchmarks/<name>_<device kind>.json. Returns the path."""
    report = dict(environment(device), results=results, **extra)
    out = out or os.path.join('docs', 'benchmarks',
                              f'{name}_{device.split(":")[0]}.json')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {out}')
    return out
