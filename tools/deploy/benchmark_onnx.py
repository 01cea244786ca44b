"""ONNX export of the T-size UperNet segmentors: export time, node count,
parity and onnxruntime CPU latency next to PyTorch eager.

    python tools/deploy/benchmark_onnx.py [--repeats 3] [--threads N]
        [--models vim vmamba mambavision] [--sizes 512x512 512x640]
        [--out docs/benchmarks/onnx_cpu.json]

For each model (random initialisation, seed 0; the weights do not change
the cost, and parity is measured on random inputs):

* the segmentor (encode_decode) is exported statically at every --sizes
  entry: seconds, nodes (Loop bodies included; the same at every size when
  the graph does not grow with H x W) and the worst relative error of
  onnxruntime against PyTorch fp32 (max |onnx - torch| / max |torch|);
* at the first size, batch 1: the median latency over --repeats runs (after
  one warm-up) of onnxruntime (CPU provider, --threads intra-op threads),
  PyTorch eager with the pure-PyTorch scan (MMVIM_SCAN_BACKEND=torch) and
  with mmvim's compiled CPU scan (cpu), same threads;
* --scans also times single scans of the shapes these models run (the
  export op in onnxruntime vs the torch and cpu backends).

Prints a markdown table and writes the JSON. About 8 minutes on 2 cores
with the defaults.
"""
import argparse
import json
import os
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
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None,
                        help='threads of torch and onnxruntime (default: '
                        "torch's)")
    parser.add_argument('--scans', action='store_true',
                        help='also time single scans (export op vs backends)')
    parser.add_argument('--out', default='docs/benchmarks/onnx_cpu.json')
    return parser.parse_args()


def timed(call, repeats: int):
    """(median seconds, all runs) of ``repeats`` calls after one warm-up
    (:func:`mmvim.utils.bench.measure`)."""
    from mmvim.utils.bench import measure
    m = measure(call, repeats, 'cpu')
    return m['median_s'], m['times_s']


def bench_model(name, config, sizes, repeats, threads, tmp):
    import torch

    from mmvim.deploy import export_onnx, graph_module, load_model
    from mmvim.deploy.export import onnx_session, run_onnx, verify
    cfg, model = load_model(config)
    module = graph_module(cfg, model)
    gen = torch.Generator().manual_seed(0)
    row = dict(model=name, config=config, exports=[])
    first = None
    for size in sizes:
        h, w = (int(v) for v in size.split('x'))
        path = os.path.join(tmp, f'{name}_{h}x{w}.onnx')
        x = torch.randn(1, 3, h, w, generator=gen)
        info = export_onnx(module, x, path,
                           output_names=module.output_names())
        session = onnx_session(path, threads)
        err = verify(module, session, x)
        row['exports'].append(dict(size=size, seconds=info['seconds'],
                                   nodes=info['nodes'],
                                   top_level_nodes=info['top_level_nodes'],
                                   mbytes=info['bytes'] / 2**20,
                                   worst_rel_error=err))
        print(f'{name} {size}: export {info["seconds"]:.1f} s, '
              f'{info["nodes"]} nodes, worst relative error {err:.2e}',
              flush=True)
        if first is None:
            first = (session, x)
    session, x = first
    lat = {}
    lat['onnxruntime'] = timed(lambda: run_onnx(session, x), repeats)
    for backend in ('torch', 'cpu'):
        os.environ['MMVIM_SCAN_BACKEND'] = backend
        with torch.no_grad():
            lat[f'eager_{backend}'] = timed(lambda: module(x), repeats)
    os.environ.pop('MMVIM_SCAN_BACKEND')
    row['latency_s'] = {k: v[0] for k, v in lat.items()}
    row['latency_runs_s'] = {k: v[1] for k, v in lat.items()}
    row['size'] = sizes[0]
    print(f'{name} {sizes[0]} latency: ' + ', '.join(
        f'{k} {v:.3f} s' for k, v in row['latency_s'].items()), flush=True)
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


def bench_scan(spec, repeats, threads, tmp):
    """One entry of SCANS: the export op in onnxruntime, the torch and the
    cpu backend, the same random inputs."""
    import torch

    from mmvim.deploy.export import _quiet_exporter, onnx_session
    from mmvim.deploy.onnx_ops import translation_table
    from mmvim.ops import selective_scan
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
    path = os.path.join(tmp, f'{name}.onnx')
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(_scan_module(), tuple(args), dynamo=True,
                          custom_translation_table=translation_table(),
                          verbose=False).save(path)
    session = onnx_session(path, threads)
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    row = dict(scan=name, shape=dict(batch=b, dim=d, length=length,
                                     d_state=n, groups=g, z=with_z))
    row['onnxruntime_s'] = timed(lambda: session.run(None, feed),
                                       repeats)[0]
    for backend in ('torch', 'cpu'):
        os.environ['MMVIM_SCAN_BACKEND'] = backend
        with torch.no_grad():
            row[f'eager_{backend}_s'] = timed(
                lambda: selective_scan(*args[:6], z, args[6], True),
                repeats)[0]
    os.environ.pop('MMVIM_SCAN_BACKEND')
    print(f'scan {name}: ' + ', '.join(
        f'{k} {v:.4f}' for k, v in row.items() if k.endswith('_s')),
        flush=True)
    return row


def table(rows) -> str:
    lines = ['| model | export s | nodes at ' + ' / '.join(
        e['size'] for e in rows[0]['exports']) + ' | worst rel. error at '
        + ' / '.join(e['size'] for e in rows[0]['exports']) +
        ' | onnxruntime s | eager torch s | eager cpu s | ort / torch '
        '| ort / cpu |', '|' + '---|' * 9]
    for r in rows:
        lat = r['latency_s']
        lines.append(
            f'| {r["model"]} | '
            + ' / '.join(f'{e["seconds"]:.0f}' for e in r['exports'])
            + ' | ' + ' / '.join(str(e['nodes']) for e in r['exports'])
            + ' | ' + ' / '.join(f'{e["worst_rel_error"]:.1e}'
                                 for e in r['exports'])
            + f' | {lat["onnxruntime"]:.3f} | {lat["eager_torch"]:.3f} | '
            f'{lat["eager_cpu"]:.3f} | '
            f'{lat["onnxruntime"] / lat["eager_torch"]:.2f} | '
            f'{lat["onnxruntime"] / lat["eager_cpu"]:.2f} |')
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
                  repeats=args.repeats, models=[], scans=[])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            result['models'].append(bench_model(
                name, MODELS[name], args.sizes, args.repeats, threads, tmp))
        if args.scans:
            result['scans'] = [bench_scan(spec, args.repeats, threads, tmp)
                               for spec in SCANS]
    result['seconds'] = time.perf_counter() - start
    result['load_average_at_end'] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(table(result['models']))
    print(f'wrote {args.out} ({result["seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
