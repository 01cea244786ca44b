"""Collect a scan-route ablation into one table (docs/scan_routes.md).

    python tools/route_ablation_table.py work_dirs/routes/* \\
        --out docs/scan_routes/ablation.json --png-dir docs/scan_routes

Each work directory is one training run (tools/train.py), tested with
``tools/test.py ... --out WORK_DIR/test_metrics.json`` and, optionally,
mapped with ``tools/erf.py ... --out WORK_DIR/erf_out{0,-1}.png``. Per run
the table gives:

- the backbone and its route(s), read from the config that tools/train.py
  dumped into the work directory;
- mIoU and aAcc from ``test_metrics.json``;
- time per iteration: the median (and mean) of the ``time`` values the
  training log recorded (``*/vis_data/scalars.json``, each the mean over a
  logging interval), leaving out the first ``--skip`` iterations;
- for each ERF map ``erf_out*.npy``: RepLKNet's 50% high-contribution area
  ratio (log-scaled map, as tools/erf.py prints it) and the spread of the
  raw map along the rows and the columns (standard deviation of the row /
  column index weighted by the map, in pixels): a map stretched along the
  image rows has a large column spread.

``--figure-dir`` draws the ERF maps of all runs of each backbone side by
side (titled by the run name less 'demo', 'upernet', the backbone and
'shapes'; 'default' if nothing is left), one row per output, as
``erf_<backbone>.png``. ``--scale decades`` (the default) shows
``log10(map / max)`` over ``--decades`` orders of magnitude: the far
contributions of a scan are many decades below the centre's, which the
log10(x + 1) scale of tools/erf.py flattens to zero; 'log', 'root' and
'raw' are tools/erf.py's scales. Each map is scaled to its own maximum.
"""
import argparse
import glob
import json
import math
import os
import os.path as osp
import statistics
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def backbone_route(work_dir):
    """(backbone type, route text) from the dumped config."""
    from mmengine.config import Config
    configs = glob.glob(osp.join(work_dir, '*.py'))
    if not configs:
        return '?', '?'
    bb = Config.fromfile(configs[0]).model.backbone
    if bb.type == 'VMamba':
        routes = bb.get('scan_routes')
        if routes is None:
            return bb.type, 'raster, column, raster_rev, column_rev'
    else:
        routes = [bb.get('scan_route', 'raster')]
    from mmvim.ops.routes import route_name
    return bb.type, ', '.join(route_name(dict(r) if isinstance(r, dict)
                                         else r) for r in routes)


def iteration_times(work_dir, skip):
    """Logged training 'time' values after ``skip`` iterations."""
    times = []
    for log in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                         'scalars.json'))):
        with open(log) as f:
            for line in f:
                rec = json.loads(line)
                if 'time' in rec and rec.get('iter', 0) > skip:
                    times.append(rec['time'])
    return times


def spread(erf):
    """Weighted standard deviation of the row and column index (pixels)."""
    import numpy as np
    total = float(erf.sum())
    if not total > 0:
        return math.nan, math.nan
    rows = np.arange(erf.shape[0])[:, None]
    cols = np.arange(erf.shape[1])[None, :]
    out = []
    for idx in (rows, cols):
        mean = float((erf * idx).sum()) / total
        out.append(math.sqrt(float((erf * (idx - mean) ** 2).sum()) / total))
    return tuple(out)


def collect(work_dir, skip):
    import numpy as np

    from mmvim.utils.erf import area_ratios
    name = osp.basename(osp.normpath(work_dir))
    backbone, routes = backbone_route(work_dir)
    row = dict(run=name, backbone=backbone, routes=routes)
    metrics = osp.join(work_dir, 'test_metrics.json')
    if osp.isfile(metrics):
        with open(metrics) as f:
            m = json.load(f)
        row.update(mIoU=m.get('mIoU'), aAcc=m.get('aAcc'))
    times = iteration_times(work_dir, skip)
    if times:
        row.update(time_median=statistics.median(times),
                   time_mean=statistics.mean(times), time_logs=len(times))
    for npy in sorted(glob.glob(osp.join(work_dir, 'erf_out*.npy'))):
        tag = osp.splitext(osp.basename(npy))[0][len('erf_'):]
        erf = np.load(npy)
        sr, sc = spread(erf)
        row[f'erf_{tag}'] = dict(area50=area_ratios(erf, (0.5, ))[0.5],
                                 row_spread=sr, col_spread=sc, npy=npy)
    return row


def display(erf, scale, decades):
    """The map in [0, 1] for display."""
    import numpy as np

    from mmvim.utils.erf import erf_heatmap
    if scale != 'decades':
        return erf_heatmap(erf, scale)
    data = np.asarray(erf, dtype=np.float64)
    peak = float(data.max())
    if not peak > 0:
        return np.zeros_like(data)
    rel = np.log10(np.maximum(data / peak, 10.0 ** -decades))
    return rel / decades + 1.0


def erf_figures(rows, out_dir, scale, decades=8):
    """One PNG per backbone: the ERF maps of its runs side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    paths = []
    for backbone in sorted({r['backbone'] for r in rows}):
        runs = [r for r in rows if r['backbone'] == backbone]
        tags = sorted({k for r in runs for k in r if k.startswith('erf_')},
                      key=lambda t: (t != 'erf_out0', t))
        if not tags:
            continue
        fig, axes = plt.subplots(len(tags), len(runs), squeeze=False,
                                 figsize=(2.3 * len(runs) + 0.8,
                                          2.5 * len(tags) + 0.4),
                                 layout='constrained')
        for j, run in enumerate(runs):
            for i, tag in enumerate(tags):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if tag not in run:
                    continue
                image = ax.imshow(
                    display(np.load(run[tag]['npy']), scale, decades),
                    cmap='RdYlGn', vmin=0, vmax=1)
                # the run name without the parts all runs share
                parts = [p for p in run['run'].split('_') if p not in (
                    'demo', 'upernet', 'shapes', backbone.lower())]
                label = ' '.join(parts) or 'default'
                ax.set_title(f'{label}\n{tag[4:]}', fontsize=8)
        what = (f'log10(ERF / max) over {decades} decades' if
                scale == 'decades' else f'{scale} scale, to its own max')
        fig.suptitle(f'{backbone}: ERF per scan route ({what})',
                     fontsize=9)
        bar = fig.colorbar(image, ax=axes, shrink=0.7)
        if scale == 'decades':
            bar.set_ticks([0, 0.5, 1])
            bar.set_ticklabels([f'1e-{decades}', f'1e-{decades // 2}', '1'])
        path = osp.join(out_dir, f'erf_{backbone.lower()}.png')
        os.makedirs(out_dir, exist_ok=True)
        fig.savefig(path, dpi=64)
        plt.close(fig)
        paths.append(path)
    return paths


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) and \
        not (isinstance(v, float) and math.isnan(v)) else '-'


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dirs', nargs='+')
    parser.add_argument('--skip', type=int, default=50,
                        help='leave out the first iterations (warm-up)')
    parser.add_argument('--out', help='write the rows as JSON here')
    parser.add_argument('--figure-dir', help='write erf_<backbone>.png here')
    parser.add_argument('--scale', default='decades',
                        choices=['decades', 'log', 'root', 'raw'])
    parser.add_argument('--decades', type=int, default=8)
    args = parser.parse_args()
    rows = [collect(w, args.skip) for w in args.work_dirs if osp.isdir(w)]
    print('| run | backbone | routes | mIoU | aAcc | s/iter (median / mean)'
          ' | ERF out 0: 50% area, row / col spread px'
          ' | ERF out -1: 50% area, row / col spread px |')
    print('|---|---|---|---:|---:|---:|---|---|')
    for r in rows:
        erfs = []
        for tag in ('out0', 'out-1'):
            e = r.get(f'erf_{tag}')
            erfs.append(f'{fmt(e["area50"], ".3f")}, '
                        f'{fmt(e["row_spread"], ".1f")} / '
                        f'{fmt(e["col_spread"], ".1f")}' if e else '-')
        print(f'| {r["run"]} | {r["backbone"]} | {r["routes"]} | '
              f'{fmt(r.get("mIoU"), ".2f")} | {fmt(r.get("aAcc"), ".2f")} | '
              f'{fmt(r.get("time_median"), ".3f")} / '
              f'{fmt(r.get("time_mean"), ".3f")} | {erfs[0]} | {erfs[1]} |')
    if args.figure_dir:
        for path in erf_figures(rows, args.figure_dir, args.scale,
                                args.decades):
            print(f'wrote {path}')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(command='python ' + ' '.join(sys.argv),
                           rows=rows), f, indent=1)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
