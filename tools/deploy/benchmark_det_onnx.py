"""Whole-detector ONNX export of every detection config: export time, node
count, parity with mmdet's ``model.predict`` and onnxruntime CPU latency
next to PyTorch eager.

    python tools/deploy/benchmark_det_onnx.py [--configs C ...]
        [--shape 800 1333] [--repeats 3] [--threads N] [--scan-op loop|mmvim]
        [--out docs/benchmarks/onnx_det_cpu.json]

For each config (random initialisation, seed 0, its classification layers
drawn so that the scores are distinct: ``distinct_scores``; the weights do
not change the cost), in a fresh process:

* the detector is exported statically for one image of --shape (H, W) in a
  batch padded to the config's ``pad_size_divisor`` (800 x 1333 -> 800 x
  1344, as mmdet's data preprocessor pads it), its scans as --scan-op
  writes them (export_onnx.py's option): seconds and nodes (Loop bodies
  included);
* onnxruntime's detections on a random input against ``model.predict``'s
  (``mmvim.deploy.onnx_detector.compare_detections``): counts, how many are
  the same in order, worst relative box and score errors, lowest mask IoU;
* the median latency over --repeats runs (after one warm-up), batch 1,
  --threads threads, of ``model.predict`` in PyTorch eager (mmvim's
  default scan backend: the compiled CPU kernel when built) and of the
  file in onnxruntime (CPU provider) followed by the same paste of the
  masks into the image (``detections_to_instances``), i.e. what each
  gives a user; the file's run alone is recorded too (``ort_run_s``).
  The three run in turns, so that other jobs on a shared machine slow
  them alike; the process's CPU seconds per call are recorded next to
  the wall seconds (``*_cpu_s``).

A config whose process fails (e.g. killed for memory) is recorded with the
reason. Prints a markdown table and writes the JSON after every config.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = (
    'configs/demo_mask_rcnn_vmamba_shapes.py',
    'configs/mask_rcnn_vmamba_t_fpn_1x_coco.py',
    'configs/mask_rcnn_vmamba_s_fpn_1x_coco.py',
    'configs/mask_rcnn_vmamba_b_fpn_1x_coco.py',
    'configs/mask_rcnn_mambavision_t_fpn_1x_coco.py',
    'configs/mask_rcnn_vim_s_fpn_1x_coco.py',
    'configs/cascade_mask_rcnn_mambavision_t_fpn_3x_coco.py',
    'configs/cascade_mask_rcnn_mambavision_s_fpn_3x_coco.py',
    'configs/cascade_mask_rcnn_mambavision_b_fpn_3x_coco.py',
    'configs/cascade_mask_rcnn_vim_ti_vitdet_coco.py',
)
# the *_ms_3x configs train the 1x configs' models differently: the same
# detector at test time (their test_cfg and pipeline are the 1x ones)
SAME_MODEL = {
    'configs/mask_rcnn_vmamba_t_fpn_ms_3x_coco.py':
    'configs/mask_rcnn_vmamba_t_fpn_1x_coco.py',
    'configs/mask_rcnn_vmamba_s_fpn_ms_3x_coco.py':
    'configs/mask_rcnn_vmamba_s_fpn_1x_coco.py',
}


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333),
                        metavar=('H', 'W'))
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None,
                        help='threads of torch and onnxruntime (default: '
                        "torch's)")
    parser.add_argument('--scan-op', choices=['loop', 'mmvim'],
                        default='loop')
    parser.add_argument('--out', default='docs/benchmarks/onnx_det_cpu.json')
    parser.add_argument('--one', help=argparse.SUPPRESS)  # child process
    parser.add_argument('--result', help=argparse.SUPPRESS)
    return parser.parse_args()


def bench_config(config, shape, repeats, threads, tmp,
                 scan_op='loop') -> dict:
    """One config, in this process (module docstring)."""
    import torch

    from mmvim.deploy import export_onnx, graph_module, load_model
    from mmvim.deploy.det_graph import distinct_scores
    from mmvim.deploy.export import onnx_session
    from mmvim.deploy.onnx_detector import (
        detections_to_instances,
        image_metas,
        run_detector_onnx,
        same_detections,
        verify_detector,
    )
    torch.set_num_threads(threads)
    cfg, model = load_model(config)
    module = graph_module(cfg, model)
    h, w = shape
    divisor = cfg.model.get('data_preprocessor', {}).get(
        'pad_size_divisor', 1) or 1
    ph, pw = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(1, 3, ph, pw, generator=gen)
    img_shape = torch.tensor([[h, w]])
    distinct_scores(model, inputs)
    path = os.path.join(tmp, 'det.onnx')
    info = export_onnx(module, (inputs, img_shape), path,
                       output_names=module.output_names(),
                       input_names=module.input_names(), scan_op=scan_op)
    row = dict(config=config, shape=[h, w], padded=[ph, pw], scan_op=scan_op,
               export_s=info['seconds'], nodes=info['nodes'],
               top_level_nodes=info['top_level_nodes'],
               mbytes=info['bytes'] / 2**20)
    print(f'{config}: export {info["seconds"]:.0f} s, {info["nodes"]} '
          'nodes', flush=True)
    session = onnx_session(path, threads)
    stats = verify_detector(model, session, inputs, img_shape)[0]
    row.update(stats, same=same_detections(stats))
    print(f'{config}: {stats}', flush=True)
    from mmdet.structures import DetDataSample
    metas = image_metas(img_shape.tolist(), (ph, pw))
    samples = [DetDataSample(metainfo=m) for m in metas]

    def ort_predict():
        outs = [torch.from_numpy(a[0]) for a in
                run_detector_onnx(session, inputs, img_shape)]
        return detections_to_instances(*outs, metas[0])

    def eager_predict():
        with torch.no_grad():
            model.predict(inputs, samples)

    # in turns (a warm-up each, then one call of each per repeat), so that
    # other jobs on a shared machine slow the three alike; wall and CPU
    # seconds (of this process, all its threads) per call
    calls = dict(ort_run=lambda: run_detector_onnx(session, inputs,
                                                   img_shape),
                 ort=ort_predict, eager=eager_predict)
    for call in calls.values():
        call()
    times = {k: dict(wall=[], cpu=[]) for k in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            times[key]['wall'].append(time.perf_counter() - wall)
            times[key]['cpu'].append(time.process_time() - cpu)
    for key, t in times.items():
        row[f'{key}_s'] = statistics.median(t['wall'])
        row[f'{key}_cpu_s'] = statistics.median(t['cpu'])
    row.update(ort_runs_s=times['ort']['wall'],
               eager_runs_s=times['eager']['wall'])
    ort, eager = row['ort_s'], row['eager_s']
    print(f'{config}: onnxruntime {ort:.2f} s, eager {eager:.2f} s',
          flush=True)
    return row


def run_child(config, args, threads, tmp) -> dict:
    """:func:`bench_config` in a fresh process (memory high-water marks
    and failures stay per config)."""
    result = os.path.join(tmp, 'row.json')
    cmd = [sys.executable, os.path.abspath(__file__), '--one', config,
           '--result', result, '--shape', *map(str, args.shape),
           '--repeats', str(args.repeats), '--threads', str(threads),
           '--scan-op', args.scan_op]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode == 0 and os.path.isfile(result):
        with open(result) as f:
            return json.load(f)
    why = f'exit code {proc.returncode}' if proc.returncode > 0 else \
        f'killed by signal {-proc.returncode}' + \
        (' (out of memory)' if proc.returncode == -9 else '')
    last = (proc.stderr.strip().splitlines() or [''])[-1]
    return dict(config=config, error=f'{why}: {last}'.strip(': '),
                seconds=time.perf_counter() - start)


def table(rows) -> str:
    lines = ['| config | export s | nodes | detections (same in order) | '
             'worst box / score error | lowest mask IoU | onnxruntime s '
             '(file / with paste) | eager s | ort / eager | CPU s, ort / eager |',
             '|' + '---|' * 10]
    for r in rows:
        name = os.path.basename(r['config'])[:-3]
        if 'error' in r:
            lines.append(f'| {name} | {r["error"]} |' + ' |' * 8)
            continue
        lines.append(
            f'| {name} | {r["export_s"]:.0f} | {r["nodes"]} | {r["ref"]} '
            f'({r["paired"]}) | {r["box_error"]:.1e} / '
            f'{r["score_error"]:.1e} | {r["mask_iou"]:.4f} | '
            f'{r["ort_run_s"]:.2f} / {r["ort_s"]:.2f} | '
            f'{r["eager_s"]:.2f} | '
            f'{r["ort_s"] / r["eager_s"]:.2f} | '
            + (f'{r["ort_cpu_s"]:.2f} / {r["eager_cpu_s"]:.2f} |'
               if 'ort_cpu_s' in r else '|'))
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
    threads = args.threads or torch.get_num_threads()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            row = bench_config(args.one, args.shape, args.repeats, threads,
                               tmp, args.scan_op)
        with open(args.result, 'w') as f:
            json.dump(row, f)
        return 0
    import onnx
    import onnxruntime

    from mmvim.utils.bench import environment
    result = dict(environment('cpu'), threads=threads,
                  load_average_at_start=os.getloadavg(),
                  onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                  repeats=args.repeats, shape=list(args.shape),
                  scan_op=args.scan_op,
                  same_model=SAME_MODEL, configs=[])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            row = run_child(config, args, threads, tmp)
            row['load_average_after'] = os.getloadavg()
            result['configs'].append(row)
            result['seconds'] = time.perf_counter() - start
            result['load_average_at_end'] = os.getloadavg()
            with open(args.out, 'w') as f:
                json.dump(result, f, indent=1)
    print(table(result['configs']))
    print(f'wrote {args.out} ({result["seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
