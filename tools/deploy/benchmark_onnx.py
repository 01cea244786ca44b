"""ONNX export of the T-size UperNet segmentors: export time, node count,
parity and onnxruntime CPU latency next to PyTorch eager, for the portable
file (standard-operator scan) and the --scan-op mmvim file (mmvim's
compiled scan as an onnxruntime custom operator).

    python tools/deploy/benchmark_onnx.py [--repeats 5] [--threads N]
        [--models vim vmamba mambavision] [--sizes 512x512 512x640]
        [--scan-ops loop mmvim] [--settings] [--scans]
        [--out docs/benchmarks/onnx_cpu.json]

For each model (random initialisation, seed 0; the weights do not change
the cost, and parity is measured on random inputs):

* the segmentor (encode_decode) is exported statically at every --sizes
  entry with every --scan-ops mode: seconds, nodes (Loop bodies included;
  the same at every size when the graph does not grow with H x W) and the
  worst relative error of onnxruntime against PyTorch fp32
  (max |onnx - torch| / max |torch|);
* at the first size, batch 1: the latency of onnxruntime for each file
  (CPU provider, mmvim.deploy.onnx_session's settings, --threads intra-op
  threads), PyTorch eager with the pure-PyTorch scan
  (MMVIM_SCAN_BACKEND=torch) and with mmvim's compiled CPU scan (cpu), same
  threads. The cases take turns, one run each per round for --repeats
  rounds after a warm-up, so load from other processes falls on all of
  them alike; the median and the minimum are kept, with the load average
  after each round, and the process's CPU time per call (with --threads 1
  the work itself, which other processes on the cores do not inflate);
* --settings: onnxruntime session settings on the portable file at the
  first size, each against mmvim.deploy.onnx_session's (all graph
  optimisations, no spinning): lower optimisation levels, one intra-op
  thread, spinning on; and the cost of --argmax (a second export with the
  labels output) against numpy's argmax of the logits;
* --scans: single scans of the shapes these models run (the portable
  export op and the custom op in onnxruntime, the torch and cpu backends).

Prints markdown tables and writes the JSON. About 10 minutes on 2 cores
with the defaults (15 with --settings).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

SIZES = ('512x512', '512x640')
MODELS = {
    'vim': 'configs/upernet_vim_ti_ade20k.py',
    'vmamba': 'configs/upernet_vmamba_t_ade20k.py',
    'mambavision': 'configs/upernet_mambavision_t_ade20k.py',
}
# (name, batch, dim, length, d_state, groups, z): the scans of the models
# at 512x512 (Vim-Ti: both directions in one call; VMamba-T stages 0 and 2;
# MambaVision-T stage 2 with its 64x64 window)
SCANS = (('vim_ti_block', 1, 768, 1024, 16, 2, True),
         ('vmamba_t_stage0', 1, 384, 16384, 1, 4, False),
         ('vmamba_t_stage2', 1, 1536, 1024, 1, 4, False),
         ('mambavision_t_stage2', 1, 160, 4096, 8, 1, False))


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(MODELS),
                        choices=list(MODELS))
    parser.add_argument('--sizes', nargs='+', default=list(SIZES),
                        help='HxW export sizes; latency at the first')
    parser.add_argument('--scan-ops', nargs='+', default=['loop', 'mmvim'],
                        choices=['loop', 'mmvim'],
                        help='export modes of the scan (default: both; '
                        'mmvim is skipped with a note when its library is '
                        'not built)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed rounds (after one warm-up)')
    parser.add_argument('--threads', type=int, default=None,
                        help='threads of torch and onnxruntime (default: '
                        "torch's)")
    parser.add_argument('--settings', action='store_true',
                        help='also time onnxruntime session settings and '
                        '--argmax on the portable file')
    parser.add_argument('--scans', action='store_true',
                        help='also time single scans (export ops vs '
                        'backends)')
    parser.add_argument('--out', default='docs/benchmarks/onnx_cpu.json')
    return parser.parse_args()


def interleaved(calls, repeats: int):
    """{name: dict(median_s, min_s, times_s, cpu_median_s)} for ``calls``
    (name -> call) after one warm-up each, run in turns for ``repeats``
    rounds; also returns the 1-minute load average after each round.
    cpu_median_s is the process's CPU time per call (all its threads): with
    one thread, the work itself, which other processes on the cores do not
    inflate as they do the wall time."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    load = []
    for _ in range(repeats):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        load.append(round(os.getloadavg()[0], 2))
    return {name: dict(median_s=statistics.median(t), min_s=min(t),
                       times_s=t, cpu_median_s=statistics.median(cpu[name]))
            for name, t in times.items()}, load


def on_backend(backend: str, fn, *args):
    """A call of ``fn(*args)`` in PyTorch eager (no grad) with
    MMVIM_SCAN_BACKEND=``backend``."""
    import torch

    def call():
        os.environ['MMVIM_SCAN_BACKEND'] = backend
        try:
            with torch.no_grad():
                fn(*args)
        finally:
            os.environ.pop('MMVIM_SCAN_BACKEND')
    return call


def bench_model(name, config, sizes, scan_ops, repeats, threads, tmp):
    import torch

    from mmvim.deploy import export_onnx, graph_module, load_model
    from mmvim.deploy.export import onnx_session, run_onnx, verify
    cfg, model = load_model(config)
    module = graph_module(cfg, model)
    gen = torch.Generator().manual_seed(0)
    row = dict(model=name, config=config, exports=[])
    sessions = {}
    x0 = None
    for size in sizes:
        h, w = (int(v) for v in size.split('x'))
        x = torch.randn(1, 3, h, w, generator=gen)
        for op in scan_ops:
            path = os.path.join(tmp, f'{name}_{h}x{w}_{op}.onnx')
            info = export_onnx(module, x, path,
                               output_names=module.output_names(),
                               scan_op=op)
            session = onnx_session(path, threads)
            err = verify(module, session, x)
            row['exports'].append(dict(
                size=size, scan_op=op, seconds=info['seconds'],
                nodes=info['nodes'], top_level_nodes=info['top_level_nodes'],
                mbytes=info['bytes'] / 2**20, worst_rel_error=err,
                custom_domains=info['custom_domains']))
            print(f'{name} {size} --scan-op {op}: export '
                  f'{info["seconds"]:.1f} s, {info["nodes"]} nodes, worst '
                  f'relative error {err:.2e}', flush=True)
            if x0 is None or x0 is x:
                x0 = x
                sessions[op] = session
    def ort_call(session):
        return lambda: run_onnx(session, x0)

    calls = {f'onnxruntime_{op}': ort_call(s) for op, s in sessions.items()}

    for backend in ('torch', 'cpu'):
        calls[f'eager_{backend}'] = on_backend(backend, module, x0)
    lat, load = interleaved(calls, repeats)
    row['latency_s'] = {k: v['median_s'] for k, v in lat.items()}
    row['latency_min_s'] = {k: v['min_s'] for k, v in lat.items()}
    row['latency_runs_s'] = {k: v['times_s'] for k, v in lat.items()}
    row['cpu_time_s'] = {k: v['cpu_median_s'] for k, v in lat.items()}
    row['load_average_per_round'] = load
    row['size'] = sizes[0]
    print(f'{name} {sizes[0]} latency (median): ' + ', '.join(
        f'{k} {v:.3f} s' for k, v in row['latency_s'].items())
        + '; CPU time: ' + ', '.join(
            f'{k} {v:.3f} s' for k, v in row['cpu_time_s'].items())
        + f'; load {load}', flush=True)
    return row


def bench_settings(name, config, size, repeats, threads, tmp):
    """onnxruntime session settings on the portable file (module docstring)
    and the cost of the --argmax output."""
    import onnxruntime as ort
    import torch

    from mmvim.deploy import export_onnx, graph_module, load_model
    from mmvim.deploy.export import onnx_session, run_onnx, session_options
    cfg, model = load_model(config)
    h, w = (int(v) for v in size.split('x'))
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    paths = {}
    for argmax in (False, True):
        module = graph_module(cfg, model, argmax)
        paths[argmax] = os.path.join(tmp, f'{name}_settings_{argmax}.onnx')
        export_onnx(module, x, paths[argmax],
                    output_names=module.output_names())
    level = ort.GraphOptimizationLevel
    variants = {
        'onnx_session (all optimisations, no spinning)': {},
        'optimization=disable_all': dict(level=level.ORT_DISABLE_ALL),
        'optimization=basic': dict(level=level.ORT_ENABLE_BASIC),
        'optimization=extended': dict(level=level.ORT_ENABLE_EXTENDED),
        'threads=1': dict(threads=1),
        'spinning=on (onnxruntime\'s default)': dict(spinning=True),
    }
    calls = {}
    for key, kw in variants.items():
        options = session_options(kw.get('threads', threads),
                                  kw.get('level'), kw.get('spinning', False))
        session = ort.InferenceSession(paths[False], options,
                                       providers=['CPUExecutionProvider'])
        calls[key] = (lambda s: lambda: run_onnx(s, x))(session)
    with_labels = onnx_session(paths[True], threads)
    calls['--argmax file (logits and labels)'] = lambda: run_onnx(
        with_labels, x)
    logits = run_onnx(onnx_session(paths[False], threads), x)[0]
    calls['numpy argmax of the logits'] = lambda: logits.argmax(1)
    lat, load = interleaved(calls, repeats)
    row = dict(model=name, size=size, load_average_per_round=load,
               settings={k: dict(median_s=v['median_s'], min_s=v['min_s'])
                         for k, v in lat.items()})
    print(f'{name} settings (median s): ' + ', '.join(
        f'{k} {v["median_s"]:.3f}' for k, v in lat.items()) +
        f'; load {load}', flush=True)
    return row


def _scan_module():
    """A torch module around the export scan (u, delta, A, B, C, D, bias
    [, z])."""
    import torch

    from mmvim.ops.scan_export import selective_scan_export

    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, bias, *z):
            return selective_scan_export(u, delta, A, B, C, D,
                                         z[0] if z else None, bias, True)
    return Scan()


def bench_scan(spec, scan_ops, repeats, threads, tmp):
    """One entry of SCANS: each export op in onnxruntime, the torch and the
    cpu backend, the same random inputs."""
    import torch

    from mmvim.deploy.export import _quiet_exporter, onnx_session
    from mmvim.deploy.onnx_ops import translation_table
    from mmvim.ops import selective_scan
    from mmvim.ops.scan_export_kernel import export_scan_op
    name, b, d, length, n, g, with_z = spec
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(b, d, length, generator=gen),
            torch.randn(b, d, length, generator=gen) - 1,
            -torch.exp(torch.randn(d, n, generator=gen)),
            torch.randn(b, g, n, length, generator=gen),
            torch.randn(b, g, n, length, generator=gen),
            torch.randn(d, generator=gen), torch.randn(d, generator=gen)]
    if with_z:
        args.append(torch.randn(b, d, length, generator=gen))
    z = args[7] if with_z else None
    calls = {}
    for op in scan_ops:
        path = os.path.join(tmp, f'{name}_{op}.onnx')
        with torch.no_grad(), _quiet_exporter(), export_scan_op(op):
            torch.onnx.export(_scan_module(), tuple(args), dynamo=True,
                              custom_translation_table=translation_table(),
                              verbose=False).save(path)
        session = onnx_session(path, threads)
        feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(),
                                                    args)}
        calls[f'onnxruntime_{op}'] = (
            lambda s, f: lambda: s.run(None, f))(session, feed)

    for backend in ('torch', 'cpu'):
        calls[f'eager_{backend}'] = on_backend(
            backend, selective_scan, *args[:6], z, args[6], True)
    lat, _ = interleaved(calls, repeats)
    row = dict(scan=name, shape=dict(batch=b, dim=d, length=length,
                                     d_state=n, groups=g, z=with_z))
    row.update({f'{k}_s': v['median_s'] for k, v in lat.items()})
    print(f'scan {name}: ' + ', '.join(
        f'{k} {v:.4f}' for k, v in row.items() if k.endswith('_s')),
        flush=True)
    return row


def table(rows, scan_ops) -> str:
    """The latency table: one row per model, both files beside eager."""
    sizes = list(dict.fromkeys(e['size'] for e in rows[0]['exports']))

    def per_op(r, key, fmt):
        return ' / '.join(
            '; '.join(fmt(e[key]) for e in r['exports']
                      if e['scan_op'] == op) for op in scan_ops)

    head = (['model', f'export s ({" / ".join(scan_ops)})',
             f'nodes ({" / ".join(scan_ops)})',
             f'worst rel. error at {", ".join(sizes)} '
             f'({" / ".join(scan_ops)})']
            + [f'onnxruntime {op} s' for op in scan_ops]
            + ['eager torch s', 'eager cpu s']
            + [f'{op} / eager cpu' for op in scan_ops])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        lat = r['latency_s']
        cells = [r['model'], per_op(r, 'seconds', lambda v: f'{v:.0f}'),
                 per_op(r, 'nodes', str),
                 per_op(r, 'worst_rel_error', lambda v: f'{v:.1e}')]
        cells += [f'{lat[f"onnxruntime_{op}"]:.3f}' for op in scan_ops]
        cells += [f'{lat["eager_torch"]:.3f}', f'{lat["eager_cpu"]:.3f}']
        cells += [f'{lat[f"onnxruntime_{op}"] / lat["eager_cpu"]:.2f}'
                  for op in scan_ops]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def settings_table(rows) -> str:
    keys = list(rows[0]['settings'])
    lines = ['| onnxruntime session (portable file, median s) | '
             + ' | '.join(r['model'] for r in rows) + ' |',
             '|' + '---|' * (len(rows) + 1)]
    for k in keys:
        lines.append(f'| {k} | ' + ' | '.join(
            f'{r["settings"][k]["median_s"]:.3f}' for r in rows) + ' |')
    return '\n'.join(lines)


def main() -> int:
    args = parse_args()
    import torch

    from mmvim.deploy.export import require_deploy
    try:
        require_deploy()
    except ImportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    from mmvim.deploy.ort_ops import LIBRARY_HINT, library_path
    scan_ops = list(dict.fromkeys(args.scan_ops))
    note = None
    if 'mmvim' in scan_ops and library_path() is None:
        note = ('--scan-op mmvim skipped: mmvim\'s onnxruntime custom-op '
                f'library is not built ({LIBRARY_HINT})')
        print(f'note: {note}', file=sys.stderr)
        scan_ops.remove('mmvim')
    if not scan_ops:
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    import onnx
    import onnxruntime

    from mmvim.utils.bench import environment
    # the machine's load: timings of a shared machine are noisy
    result = dict(environment('cpu'), threads=threads,
                  load_average_at_start=os.getloadavg(),
                  onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                  repeats=args.repeats, scan_ops=scan_ops, note=note,
                  models=[], settings=[], scans=[])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            result['models'].append(bench_model(
                name, MODELS[name], args.sizes, scan_ops, args.repeats,
                threads, tmp))
        if args.settings:
            result['settings'] = [
                bench_settings(name, MODELS[name], args.sizes[0],
                               args.repeats, threads, tmp)
                for name in args.models]
        if args.scans:
            result['scans'] = [bench_scan(spec, scan_ops, args.repeats,
                                          threads, tmp) for spec in SCANS]
    result['seconds'] = time.perf_counter() - start
    result['load_average_at_end'] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(table(result['models'], scan_ops))
    if result['settings']:
        print(settings_table(result['settings']))
    print(f'load average at start {result["load_average_at_start"]}, at '
          f'end {result["load_average_at_end"]}')
    print(f'wrote {args.out} ({result["seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
