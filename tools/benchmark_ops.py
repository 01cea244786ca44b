"""Time and peak memory of the selective-scan backends vs the reference loop.

    python tools/benchmark_ops.py                       # CPU, default shapes
    python tools/benchmark_ops.py --device cuda         # + the mamba-ssm kernel
    python tools/benchmark_ops.py --quick               # small shapes, smoke run

Implementations: ``loop`` (the algorithm of mamba-ssm's selective_scan_ref,
re-implemented in mmvim.ops.reference), ``torch`` (mmvim's torch backend),
``cpu`` (mmvim's compiled C++ kernel, mmvim._ext) on CPU and, on CUDA,
``cuda`` (mamba-ssm's kernel, when installed) and ``triton`` (mmvim's
Triton kernels; the first call of a shape autotunes them, and is the
warm-up). Each case runs in a fresh
subprocess: one warm-up call, then the median of ``--repeats`` timed calls
(synchronised on CUDA); peak memory is the process's extra resident memory
(CPU, ru_maxrss high-water mark over the inputs) or
``torch.cuda.max_memory_allocated`` over the inputs (CUDA).

Throughput is reported as state updates per second (batch * dim * L * N per
call; a forward+backward call counts the same updates) and, on CPU, as a
fraction of the machine's peak: the updates/s times 9 FLOPs per update (the
FLOPs convention of mmvim.utils.flops, as mamba-ssm's authors count the
scan) over the measured float32 FLOP/s of a large matrix product
(``torch.mm`` of 2048x2048 matrices with the same threads), which runs
close to the FMA units' limit. Prints a table and writes JSON (default
docs/benchmarks/ops_<device>.json).
"""
import argparse

# name: (batch, dim, dstate, length, B/C layout, what it stands for, z)
SHAPES = {
    'vim_t_512': (1, 768, 16, 1024, 'group2',
                  'Vim-Ti block at 512x512 (both directions in one call)',
                  True),
    'vmamba_t_s1_512': (1, 384, 1, 16384, 'group4',
                        'VMamba-T stage-1 scan at 512x512 (4 routes x 96, '
                        'no z)', False),
    'vim_s_512': (2, 384, 16, 1024, 'var',
                  'Vim-S block at 512x512 (one direction)', True),
    'vmamba_t_s1_224': (2, 768, 1, 3136, 'group4',
                        'VMamba-T stage-1 scan at 224x224 (4 routes x 192)',
                        True),
    'vim_s_L4096': (2, 384, 16, 4096, 'var', 'Vim-S block, L=4096', True),
}
QUICK_SHAPES = {
    'quick_a': (1, 32, 16, 256, 'var', 'smoke test', True),
    'quick_b': (1, 32, 1, 512, 'group4', 'smoke test, grouped', False),
}
# the reference loop's forward+backward takes minutes here: time it on the
# shapes of the earlier tables only
LOOP_FWD_ONLY = ('vim_t_512', 'vmamba_t_s1_512')
FLOPS_PER_UPDATE = 9


def run_case(impl, shape, mode, device, repeats, seed=0):
    """Runs in the child process; returns a dict of measurements."""
    import torch

    from mmvim.ops.dispatch import kernel
    from mmvim.ops.reference import selective_scan_loop
    from mmvim.ops.selective_scan import selective_scan_torch
    from mmvim.utils.bench import measure
    batch, dim, dstate, length, layout = shape[:5]
    with_z = shape[6] if len(shape) > 6 else True
    gen = torch.Generator().manual_seed(seed)
    groups = int(layout[len('group'):]) if layout.startswith('group') else 0

    def bc():
        if groups:
            return torch.randn(batch, groups, dstate, length, generator=gen)
        return torch.randn(batch, dstate, length, generator=gen)

    grad = mode == 'fwd+bwd'
    inputs = dict(
        u=torch.randn(batch, dim, length, generator=gen),
        delta=torch.randn(batch, dim, length, generator=gen) * 0.5 - 2,
        A=-torch.rand(dim, dstate, generator=gen) * 4,
        B=bc(), C=bc(),
        D=torch.randn(dim, generator=gen),
        z=torch.randn(batch, dim, length, generator=gen),
        delta_bias=torch.randn(dim, generator=gen) * 0.1)
    if not with_z:
        del inputs['z']
    inputs = {k: v.to(device).requires_grad_(grad)
              for k, v in inputs.items()}
    if impl in ('loop', 'torch'):
        fn = {'loop': selective_scan_loop, 'torch': selective_scan_torch}[impl]
    else:
        kern = kernel('selective_scan', impl)
        fn = kern.load()
        if fn is None:
            return dict(error=f'kernel unavailable: {kern.error}')

    def call():
        if grad:
            out = fn(**inputs, delta_softplus=True)
            out.sum().backward()
            for v in inputs.values():
                v.grad = None
        else:
            with torch.no_grad():
                fn(**inputs, delta_softplus=True)

    res = measure(call, repeats, device)
    if impl == 'cpu':
        import mmvim._ext
        res['isa'] = mmvim._ext.isa()
    return res


def matmul_peak(n=2048, repeats=10):
    """Runs in the child process: float32 FLOP/s of an n x n matrix product
    (the best of ``repeats``), a measured stand-in for the FMA peak."""
    import time

    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b), time) for _ in range(repeats))
    return dict(flops_per_s=2 * n ** 3 / best, n=n,
                threads=torch.get_num_threads())


def _timed(fn, time):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spawn(impl, name, shape, mode, device, repeats):
    from mmvim.utils.bench import spawn as spawn_case
    return spawn_case('tools.benchmark_ops', 'run_case', impl, list(shape),
                      mode, device, repeats,
                      env=dict(MMVIM_SCAN_BACKEND='auto'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--loop-bwd-repeats', type=int, default=1,
                        help='repeats for the (very slow) loop fwd+bwd')
    parser.add_argument('--shapes', nargs='+', help='subset of shape names')
    parser.add_argument('--quick', action='store_true',
                        help='small shapes only (smoke test)')
    parser.add_argument('--out', help='JSON output path')
    args = parser.parse_args()

    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = {k: v for k, v in {**SHAPES, **QUICK_SHAPES}.items()
                  if k in args.shapes}
    on_cuda = args.device.startswith('cuda')
    impls = ['loop', 'torch'] + (['cuda', 'triton'] if on_cuda else ['cpu'])
    from mmvim.utils.bench import spawn as spawn_case
    peak = None
    if not on_cuda:
        peak = spawn_case('tools.benchmark_ops', 'matmul_peak')
        if 'flops_per_s' in peak:
            print(f'peak: float32 matmul {peak["flops_per_s"] / 1e9:.0f} '
                  f'GFLOP/s ({peak["threads"]} threads); % peak = '
                  f'{FLOPS_PER_UPDATE} FLOPs x updates/s over that')
    peak_flops = (peak or {}).get('flops_per_s')
    results = []
    print(f'{"shape":<17}{"mode":<9}{"impl":<7}{"median s":>10}'
          f'{"peak MB":>9}{"vs loop":>9}{"vs torch":>9}{"Gupd/s":>8}'
          f'{"% peak":>8}')
    for name, shape in shapes.items():
        updates = shape[0] * shape[1] * shape[2] * shape[3]
        for mode in ('fwd', 'fwd+bwd'):
            base = {}
            for impl in impls:
                if impl == 'loop' and (name.endswith('L4096') or (
                        mode == 'fwd+bwd' and name in LOOP_FWD_ONLY)):
                    continue  # the scaling case times our backends only
                repeats = args.loop_bwd_repeats if (
                    impl == 'loop' and mode == 'fwd+bwd') else args.repeats
                res = spawn(impl, name, shape, mode, args.device, repeats)
                row = dict(shape=name, batch=shape[0], dim=shape[1],
                           dstate=shape[2], length=shape[3],
                           bc_layout=shape[4], about=shape[5],
                           with_z=shape[6], mode=mode, impl=impl,
                           repeats=repeats, **res)
                results.append(row)
                if 'error' in res:
                    print(f'{name:<17}{mode:<9}{impl:<7}  {res["error"]}')
                    continue
                t = res['median_s']
                if impl in ('loop', 'torch'):
                    base[impl] = t
                for ref in ('loop', 'torch'):
                    if ref in base and impl != ref:
                        row[f'speedup_vs_{ref}'] = base[ref] / t
                row['updates_per_s'] = updates / t
                if peak_flops:
                    row['fraction_of_peak'] = (
                        FLOPS_PER_UPDATE * updates / t / peak_flops)

                def fmt(key, spec, unit='', row=row):
                    return format(row[key], spec) + unit if key in row else ''
                print(f'{name:<17}{mode:<9}{impl:<7}{t:>10.4f}'
                      f'{res["peak_extra_mb"]:>9.1f}'
                      f'{fmt("speedup_vs_loop", ".1f", "x"):>9}'
                      f'{fmt("speedup_vs_torch", ".1f", "x"):>9}'
                      f'{row["updates_per_s"] / 1e9:>8.2f}'
                      f'{fmt("fraction_of_peak", ".1%"):>8}', flush=True)
    # time/memory scaling of the torch backend in L (4096 vs 1024)
    scaling = {}
    by_key = {(r['shape'], r['mode'], r['impl']): r for r in results}
    for mode in ('fwd', 'fwd+bwd'):
        small = by_key.get(('vim_s_512', mode, 'torch'))
        large = by_key.get(('vim_s_L4096', mode, 'torch'))
        if small and large and 'median_s' in small and 'median_s' in large:
            scaling[mode] = dict(
                time_ratio_L4096_over_L1024=large['median_s'] /
                small['median_s'],
                memory_ratio_L4096_over_L1024=large['peak_extra_mb'] /
                max(small['peak_extra_mb'], 1e-9))
            print(f'torch backend {mode}: L=4096 / L=1024 time x'
                  f'{scaling[mode]["time_ratio_L4096_over_L1024"]:.2f}, '
                  f'peak memory x'
                  f'{scaling[mode]["memory_ratio_L4096_over_L1024"]:.2f}')
    from mmvim.utils.bench import write_report
    write_report(args.device, results,
                 'ops_quick' if args.quick else 'ops', args.out,
                 scaling=scaling, peak=peak,
                 flops_per_update=FLOPS_PER_UPDATE)


if __name__ == '__main__':
    main()
