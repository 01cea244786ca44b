"""Where a backbone's CPU time goes: ``torch.profiler`` self time by op,
and summed into a few kinds (the scan, linear layers, convolutions, layout
copies, the rest).

    python tools/profile_backbone.py --models vim_t vmamba_t --size 512 \\
        --modes fwd fwd+bwd --out docs/benchmarks/profile_cpu.json

One profiled call after two warm-up calls, batch 1, the default scan
backend (``MMVIM_SCAN_BACKEND`` picks another), in this process. Profiler
times are inflated by the profiler itself and vary from run to run by
several per cent: read the shares, and time with tools/benchmark.py.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# op name -> kind; anything else is 'other'
KINDS = {
    'scan': ('_SelectiveScanCpu', '_SelectiveScanCpuBackward',
             '_SelectiveScanTorch', '_SelectiveScanTorchBackward'),
    'linear': ('aten::mm', 'aten::addmm', 'aten::bmm'),
    'conv': ('aten::mkldnn_convolution', 'aten::convolution_backward'),
    'layout': ('aten::cat', 'aten::copy_', 'aten::flip', 'aten::fill_',
               'aten::stack', 'aten::index', 'aten::gather',
               'aten::constant_pad_nd', 'aten::zero_'),
}


def kind_of(name: str) -> str:
    for kind, names in KINDS.items():
        if name in names:
            return kind
    return 'other'


def profile(model_name: str, size: int, mode: str, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mmvim.utils.presets import build_preset
    torch.manual_seed(0)
    model = build_preset(model_name, img_size=size)
    model.train(mode == 'fwd+bwd')
    x = torch.randn(1, 3, size, size)

    def step():
        if mode == 'fwd+bwd':
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    step()
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3  # ms
    kinds = {k: 0.0 for k in (*KINDS, 'other')}
    for e in events:
        kinds[kind_of(e.key)] += e.self_cpu_time_total / 1e3
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return dict(model=model_name, img_size=size, mode=mode,
                threads=torch.get_num_threads(),
                scan_backend=os.environ.get('MMVIM_SCAN_BACKEND', 'auto'),
                total_ms=total,
                kinds_ms=kinds,
                top_ops=[dict(op=e.key, self_ms=e.self_cpu_time_total / 1e3,
                              calls=e.count) for e in ops])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['vim_t', 'vmamba_t'])
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--modes', nargs='+', default=['fwd'],
                        choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--top', type=int, default=12,
                        help='ops listed per case')
    parser.add_argument('--out', help='JSON output path')
    args = parser.parse_args()
    results = []
    for name in args.models:
        for mode in args.modes:
            res = profile(name, args.size, mode, args.top)
            results.append(res)
            total = res['total_ms']
            shares = ', '.join(f'{k} {100 * v / total:.0f}%'
                               for k, v in res['kinds_ms'].items())
            print(f'{name} {args.size} {mode}: {total:.1f} ms profiled '
                  f'({shares})')
            for op in res['top_ops']:
                print(f'    {op["op"][:40]:40s} {op["self_ms"]:8.1f} ms '
                      f'{100 * op["self_ms"] / total:5.1f}%  '
                      f'x{op["calls"]}')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(command=' '.join(sys.argv), results=results), f,
                      indent=1)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
