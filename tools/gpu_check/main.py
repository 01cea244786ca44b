"""The driver of tools/gpu_check.py: arguments, the phases in order of
value within a time budget, the JSON report after every phase, the final
table. See tools/gpu_check.py for what each phase measures."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from typing import List, Optional

from .imports import ROOT

# the budget counts from here (before torch and mmvim are imported): a
# device command's time limit counts the start too
START = time.time()

#: in order of value: each runs only while the budget lasts
PHASES = ('parity', 'speed', 'backbones', 'vim_vs_deit', 'throughput',
          'cuda')
MODULES = dict(parity='parity', speed='speed', backbones='backbones',
               vim_vs_deit='vim_vs_deit', throughput='throughput',
               cuda='cuda_kernels')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from . import __doc__ as doc
    parser = argparse.ArgumentParser(
        prog='tools/gpu_check.py', description=doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda',
                        help='cuda (default) or cpu (the dry run: Triton '
                        "kernels in Triton's interpreter)")
    parser.add_argument('--budget', type=float,
                        help='seconds: phases run in order while time is '
                        'left and are stopped before it ends')
    parser.add_argument('--phases', nargs='+', default=list(PHASES),
                        choices=PHASES)
    parser.add_argument('--tiny', action='store_true',
                        help='tiny models and sizes (the CPU dry run)')
    parser.add_argument('--models', nargs='+',
                        help='parity / speed: these backbones only')
    parser.add_argument('--sizes', nargs='+', type=int,
                        help='speed: these image sizes only')
    parser.add_argument('--repeats', type=int,
                        help='timed calls after one warm-up (median; '
                        'default 5, with --tiny 1)')
    parser.add_argument('--vim-batch', type=int, default=16,
                        help='batch of the Vim-Ti / DeiT-Ti timings')
    parser.add_argument('--autotune', action='store_true',
                        help='autotune the Triton block sizes (default: the '
                        'configs MMVIM_TRITON_AUTOTUNE=0 takes, compiled '
                        'ahead of time without spills; tuning compiles '
                        'every candidate of every shape: minutes)')
    parser.add_argument('--out', help='JSON report (default '
                        'work_dirs/gpu_check/gpu_check_<device>.json)')
    parser.add_argument('--work-dir', default=os.path.join(
        ROOT, 'work_dirs', 'gpu_check'), help='build logs')
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 5
    if args.device not in ('cuda', 'cpu') and \
            not args.device.startswith('cuda:'):
        parser.error(f'--device must be cuda or cpu, got {args.device!r}')
    if args.device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda but torch sees no CUDA device '
                         f'(torch {torch.__version__}); use --device cpu '
                         'for the dry run')
    return args


def _environment(device: str) -> dict:
    import platform

    import torch
    info = dict(command=' '.join(sys.argv), date=time.strftime('%Y-%m-%d'),
                device=device, python=platform.python_version(),
                torch=torch.__version__, cuda=torch.version.cuda)
    try:
        import triton
        info['triton'] = triton.__version__
    except ImportError:
        info['triton'] = None
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name()
        info['capability'] = list(torch.cuda.get_device_capability())
    return info


def _summary(report: dict) -> List[tuple]:
    lines = []
    for name, res in report['phases'].items():
        info = res.get('reason') or res.get('error') or ''
        rows = res.get('rows', [])
        if not info:
            info = f'{len(rows)} rows, {res.get("seconds", 0):.0f} s'
        if name == 'vim_vs_deit' and 'fps_ratio' in res:
            info += (f'; at {res["compared_at"]}: {res["fps_ratio"]:.2f}x '
                     f'FPS (paper 2.8x)')
            if 'memory_saving' in res:
                info += f', {res["memory_saving"]:.1%} less memory (86.8%)'
        lines.append((name, res['status'], info[:110]))
        for r in rows:
            if r.get('status') not in ('ok', None):
                key = ' '.join(str(r.get(k)) for k in ('model', 'op', 'dtype')
                               if r.get(k) is not None)
                lines.append((f'  {key}', r['status'],
                              str(r.get('error', ''))[:80]))
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == 'cpu':
        # Triton kernels run on CPU tensors only in Triton's interpreter,
        # chosen when they are imported (by the first phase)
        os.environ.setdefault('TRITON_INTERPRET', '1')
    if not args.autotune:
        os.environ.setdefault('MMVIM_TRITON_AUTOTUNE', '0')
    from . import common
    from .imports import load_mmvim
    budget = common.Budget(args.budget, start=START if argv is None
                           else None)
    kind = args.device.split(':')[0]
    out = args.out or os.path.join(ROOT, 'work_dirs', 'gpu_check',
                                   f'gpu_check_{kind}.json')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    report = dict(_environment(args.device), tiny=args.tiny,
                  budget_s=args.budget, import_mode=load_mmvim(),
                  triton_autotune=os.environ['MMVIM_TRITON_AUTOTUNE'] != '0',
                  phases={})

    def write():
        report['seconds'] = time.time() - budget.start
        with open(out, 'w') as f:
            json.dump(report, f, indent=1, default=str)

    for name in [p for p in PHASES if p in args.phases]:
        phase = common.Phase(name)
        report['phases'][name] = phase.result
        if budget.left() <= 0:
            phase.result.update(status='skipped',
                                reason='no time left in the budget')
            write()
            continue
        print(f'[gpu_check] {name} ({budget.left():.0f} s left) ...',
              flush=True)
        start = time.time()
        module = __import__(f'{__package__}.{MODULES[name]}',
                            fromlist=['run'])
        try:
            extra = (budget,) if name == 'cuda' else ()
            budget.run(functools.partial(module.run, args, phase, *extra))
            if phase.result['status'] == 'running':
                phase.result['status'] = common.worst(phase.rows)
        except (Exception, common.PhaseTimeout) as exc:  # noqa: BLE001
            # (the next phase still runs)
            if isinstance(exc, common.PhaseTimeout) or budget.left() <= 0:
                phase.result.update(status='timeout', reason=(
                    f'stopped by the budget after {len(phase.rows)} rows'))
            else:
                phase.result.update(status='error', error=common.err(exc),
                                    traceback=traceback.format_exc()[-2000:])
        phase.result['seconds'] = time.time() - start
        write()
    write()
    lines = _summary(report)
    width = max(len(r[0]) for r in lines) + 2 if lines else 10
    print(f'\n{"phase":<{width}}{"status":<10}result')
    for name, status, info in lines:
        print(f'{name:<{width}}{status:<10}{info}')
    print(f'\n{report["seconds"]:.0f} s; wrote {out}')
    bad = [p for p, r in report['phases'].items()
           if r['status'] in ('failed', 'error')]
    return 1 if bad else 0
