"""Throughput and peak memory over input sizes: mmvim backbones vs the
transformer baselines, or whole models from a config.

    # the linear-cost claim on this machine: Vim vs DeiT, VMamba /
    # MambaVision vs Swin, 224 .. 1248, forward and forward+backward
    python tools/benchmark.py --models vim_t deit_t vmamba_t mambavision_t swin_t \\
        --sizes 224 512 768 1024 1248 --out docs/benchmarks/sweep_cpu.json
    python tools/benchmark.py --device cuda --models vim_t deit_t --sizes 512 1248 \\
        --batch-sizes 1 8 --amp
    python tools/benchmark.py --sizes 512 --batch-sizes 2 --models \
        configs/upernet_vmamba_t_ade20k.py mmseg::swin/SWIN_T_UPERNET.py
    python tools/benchmark.py --models vim_t --sizes 512 --compare-fused
    # the scan backends against each other, with the scan's share of the time
    python tools/benchmark.py --models vim_t vmamba_t --sizes 512 \
        --scan-backends torch cpu --scan-share

``--models`` takes presets (``mmvim.utils.presets.PRESETS``: vim_t/s/b,
vmamba_t/s/b, mambavision_t/s/b and the baselines deit_t, deit_s, swin_t,
built from mmseg's own VisionTransformer / SwinTransformer) or config files
(the whole segmentor / detector: ``predict`` for 'fwd', ``loss`` +
backward for 'fwd+bwd', on synthetic images and labels); ``mmseg::path`` /
``mmdet::path`` name configs shipped with those packages, e.g.
``mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-
512x512.py`` (one name, no line break).

Each case runs in a fresh process: one warm-up, then the median of
``--repeats`` timed calls (CUDA synchronised); images/s = batch / median;
peak memory is CUDA's max allocated, or the process's resident high-water
mark on CPU, over what was allocated before. Once a case takes longer than
``--max-seconds``, bigger sizes of that model and mode are skipped (so a
CPU sweep ends). Writes JSON with every case and the scaling exponent of
each model (slope of log time vs log tokens, overall and at >= 512 px), and
a PNG plot (img/s and memory vs size, log scale) next to it.

``--scan-backends`` runs every case once per selective-scan backend
(``MMVIM_SCAN_BACKEND``; default: auto, i.e. the compiled kernel for the
device when it is built). ``--scan-share`` times one more call with timers
around the scan's autograd functions (forward and backward, torch and cpu
backends) and reports the scan's share of that call.
"""
import argparse
import contextlib
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HIGH_RES = 512  # the exponent 'at high resolution' uses sizes >= this



def resolve_config(target):
    """A config path; 'mmseg::swin/....py' / 'mmdet::...' name the configs
    shipped inside those packages (e.g. the Swin baselines' UperNet)."""
    if '::' in target:
        import importlib
        scope, rel = target.split('::', 1)
        package = importlib.import_module(scope)
        return os.path.join(os.path.dirname(package.__file__), '.mim',
                            'configs', rel)
    return target


def _hw(size):
    """(h, w) of a square size or an (h, w) pair."""
    return (size, size) if isinstance(size, int) else tuple(size)


def _seg_samples(batch, size, classes):
    """Random-label SegDataSamples for (h, w) (or square ``size``) inputs."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    h, w = _hw(size)
    samples = []
    for _ in range(batch):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w)))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w),
                            pad_shape=(h, w)))
        samples.append(s)
    return samples


def _det_samples(batch, size):
    """DetDataSamples with two boxes and masks for (h, w) (or square
    ``size``) inputs."""
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    h, w = _hw(size)
    samples = []
    for _ in range(batch):
        s = DetDataSample()
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, h // 8:h // 2, w // 8:w // 2] = 1
        masks[1, h // 3:h - 4, w // 4:w - 8] = 1
        s.gt_instances = InstanceData(
            bboxes=torch.tensor([[w / 8, h / 8, w / 2, h / 2],
                                 [w / 4, h / 3, w - 8., h - 4.]]),
            labels=torch.tensor([0, 1]),
            masks=BitmapMasks(masks.numpy(), h, w))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w),
                            pad_shape=(h, w), scale_factor=(1., 1.),
                            batch_input_shape=(h, w)))
        samples.append(s)
    return samples


def build_case(target, img_size, batch, mode, device, fused):
    """The model and a no-argument call that runs one step of ``mode``."""
    import torch
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    train = mode == 'fwd+bwd'
    if target.endswith('.py'):
        from mmvim.utils import build_model, load_config
        cfg = load_config(resolve_config(target))
        model = build_model(cfg).to(device)
        model.train(train)
        if cfg.get('default_scope') == 'mmdet':
            samples = _det_samples(batch, img_size)
        else:
            classes = cfg.model.decode_head.num_classes
            samples = _seg_samples(batch, img_size, classes)
        samples = [s.to(device) for s in samples]

        def step():
            if train:
                losses = model.loss(x, samples)
                sum(v.sum() for k, v in losses.items()
                    if 'loss' in k and torch.is_tensor(v)).backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model.predict(x, samples)
        return model, step

    from mmvim.utils.presets import build_preset
    extra = {} if fused is None else dict(fused_scan=fused)
    model = build_preset(target, img_size=img_size, **extra).to(device)
    model.train(train)  # (mmseg's ViT.train returns None: no chaining)

    def step():
        if train:
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)
    return model, step


@contextlib.contextmanager
def scan_timer():
    """Inside: the forward and backward of the scan's autograd functions
    (torch and cpu backends) run under timers; yields a one-element list
    that accumulates their wall time in seconds."""
    import importlib
    import time

    # (the package attribute of that name is the function, not the module)
    scan_module = importlib.import_module('mmvim.ops.selective_scan')
    classes = [scan_module._SelectiveScanTorch]
    try:
        classes.append(importlib.import_module(
            'mmvim.ops.selective_scan_cpu')._SelectiveScanCpu)
    except ImportError:
        pass
    total = [0.0]

    def timed(fn):
        def wrapper(*args):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                total[0] += time.perf_counter() - start
        return staticmethod(wrapper)

    saved = [(cls, name, cls.__dict__[name]) for cls in classes
             for name in ('forward', 'backward')]
    try:
        for cls, name, method in saved:
            setattr(cls, name, timed(method.__func__))
        yield total
    finally:
        for cls, name, method in saved:
            setattr(cls, name, method)


def run_case(target, img_size, batch, mode, device, amp, fused, repeats,
             scan_share=False):
    """Runs in the child process; returns a dict of measurements."""
    import time

    import torch

    from mmvim.utils.bench import measure
    torch.manual_seed(0)
    model, step = build_case(target, img_size, batch, mode, device, fused)
    dtype = torch.bfloat16 if device == 'cpu' else torch.float16

    def call():
        with torch.autocast(device.split(':')[0], dtype=dtype, enabled=amp):
            step()

    res = measure(call, repeats, device)
    res['images_per_s'] = batch / res['median_s']
    res['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
    if scan_share and not device.startswith('cuda'):
        with scan_timer() as spent:
            start = time.perf_counter()
            call()
            total = time.perf_counter() - start
        res.update(scan_s=spent[0], scan_share=spent[0] / total,
                   scan_timed_call_s=total)
    return res


def tokens(size, patch=16):
    """Patch tokens of a size x size image (stride-16 grid): the sequence
    length of the plain models, and proportional to every model's pixels."""
    return (size // patch) ** 2


def fit_exponent(points):
    """Least-squares slope of log(y) vs log(tokens) over (size, y) points,
    or None with fewer than two sizes."""
    pts = [(math.log(tokens(s)), math.log(y)) for s, y in points if y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def scaling(results):
    """Time and memory exponents per (model, mode, batch, scan)."""
    groups = {}
    for r in results:
        if 'median_s' in r:
            key = (r['model'], r['mode'], r['batch_size'], r['scan'])
            groups.setdefault(key, []).append(r)
    rows = []
    for (model, mode, batch, scan), rs in groups.items():
        rs.sort(key=lambda r: r['img_size'])
        row = dict(model=model, mode=mode, batch_size=batch, scan=scan,
                   sizes=[r['img_size'] for r in rs])
        for name, field in (('time', 'median_s'), ('memory', 'peak_extra_mb')):
            row[f'{name}_exponent'] = fit_exponent(
                [(r['img_size'], r[field]) for r in rs])
            row[f'{name}_exponent_high_res'] = fit_exponent(
                [(r['img_size'], r[field]) for r in rs
                 if r['img_size'] >= HIGH_RES])
        rows.append(row)
    return rows


def plot(results, path, title):
    """img/s and peak memory vs input size (log-log), a row per mode."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    modes = sorted({r['mode'] for r in results if 'median_s' in r})
    if not modes:
        return None
    fig, axes = plt.subplots(len(modes), 2, figsize=(11, 4.2 * len(modes)),
                             squeeze=False)
    for row, mode in zip(axes, modes):
        lines = {}
        for r in results:
            if r['mode'] == mode and 'median_s' in r:
                label = r['model'] if r['scan'] == 'default' else \
                    f'{r["model"]} ({r["scan"]})'
                if len({x['batch_size'] for x in results}) > 1:
                    label += f' b{r["batch_size"]}'
                lines.setdefault(label, []).append(r)
        for label, rs in sorted(lines.items()):
            rs.sort(key=lambda r: r['img_size'])
            sizes = [r['img_size'] for r in rs]
            style = '--' if label.startswith(('deit', 'swin')) else '-'
            row[0].plot(sizes, [r['images_per_s'] for r in rs], style,
                        marker='o', label=label)
            row[1].plot(sizes, [r['peak_extra_mb'] for r in rs], style,
                        marker='o', label=label)
        for ax, what in zip(row, ('images / s', 'peak memory (MB)')):
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.set_xlabel('input size (px, square)')
            ax.set_ylabel(what)
            ax.set_title(f'{mode}: {what}')
            sizes = sorted({r['img_size'] for r in results})
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(s) for s in sizes])
            ax.minorticks_off()
            ax.grid(True, which='major', alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['vim_t', 'deit_t'],
                        help='presets and/or config files')
    parser.add_argument('--sizes', '--img-size', type=int, nargs='+',
                        default=[512], help='square input sizes')
    parser.add_argument('--batch-sizes', '--batch-size', type=int,
                        nargs='+', default=[1])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true',
                        help='autocast (bf16 on CPU, fp16 on CUDA)')
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'],
                        choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--compare-fused', action='store_true',
                        help='Vim presets: also time the two-call scan')
    parser.add_argument('--scan-backends', nargs='+',
                        default=[os.environ.get('MMVIM_SCAN_BACKEND', 'auto')
                                 or 'auto'],
                        choices=['auto', 'torch', 'cpu', 'cuda'],
                        help='run every case with each selective-scan '
                        'backend (MMVIM_SCAN_BACKEND)')
    parser.add_argument('--scan-share', action='store_true',
                        help='also report the share of time spent in the '
                        'selective scan (CPU)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--max-seconds', type=float, default=120.0,
                        help='skip bigger sizes of a model/mode once one '
                        'call takes longer than this')
    parser.add_argument('--out', help='JSON output path (default '
                        'docs/benchmarks/backbone_<device>.json)')
    parser.add_argument('--merge', nargs='+', metavar='JSON',
                        help='run nothing: merge the results of earlier '
                        'runs (a sweep split into parts) into --out, with '
                        'the exponents and the plot')
    parser.add_argument('--plot', help='PNG path (default: the JSON path '
                        'with .png; "none" for no plot)')
    args = parser.parse_args()
    from mmvim.utils.bench import spawn, write_report
    from mmvim.utils.presets import PRESETS
    for target in args.models:
        if not (target in PRESETS or (target.endswith('.py') and
                                      os.path.isfile(resolve_config(target)))):
            parser.error(f'{target!r} is neither a preset '
                         f'({", ".join(sorted(PRESETS))}) nor a config file')

    results, parts = [], []
    for path in args.merge or []:
        with open(path) as f:
            part = json.load(f)
        results.extend(part['results'])
        parts.append(dict(path=path, command=part.get('command'),
                          date=part.get('date')))
    if args.merge:
        args.models = []  # nothing to run
        args.batch_sizes = sorted({r['batch_size'] for r in results})
    else:
        print(f'{"model":<24}{"mode":<9}{"scan":<10}{"size":>6}{"batch":>6}'
              f'{"median s":>10}{"img/s":>9}{"peak MB":>9}'
              + (f'{"scan %":>8}' if args.scan_share else ''))
    variants = []
    for fused in (None, True, False):
        for backend in args.scan_backends:
            variants.append((fused, backend))
    for target in args.models:
        is_vim = PRESETS.get(target, ('', ''))[1] == 'Vim'
        for mode in args.modes:
            for fused, backend in variants:
                if (fused is None) == (args.compare_fused and is_vim):
                    continue
                scan = {None: 'default', True: 'fused',
                        False: 'separate'}[fused]
                if backend != 'auto':
                    scan = backend if fused is None else f'{scan}/{backend}'
                env = dict(MMVIM_SCAN_BACKEND=backend)
                for batch in args.batch_sizes:
                    too_slow = None
                    for size in sorted(args.sizes):
                        name = os.path.splitext(os.path.basename(target))[0]
                        case = dict(model=name, mode=mode, scan=scan,
                                    scan_backend=backend,
                                    img_size=size, batch_size=batch,
                                    amp=args.amp, tokens=tokens(size))
                        if too_slow:
                            case['skipped'] = too_slow
                            results.append(case)
                            continue
                        res = spawn('tools.benchmark', 'run_case', target,
                                    size, batch, mode, args.device, args.amp,
                                    fused, args.repeats, args.scan_share,
                                    env=env)
                        case.update(res)
                        results.append(case)
                        head = (f'{name[:23]:<24}{mode:<9}{scan:<10}'
                                f'{size:>6}{batch:>6}')
                        if 'error' in res:
                            print(f'{head}  {res["error"][:60]}', flush=True)
                            too_slow = f'after an error at {size}'
                            continue
                        share = (f'{res["scan_share"]:>8.0%}'
                                 if 'scan_share' in res else '')
                        print(f'{head}{res["median_s"]:>10.3f}'
                              f'{res["images_per_s"]:>9.2f}'
                              f'{res["peak_extra_mb"]:>9.0f}{share}',
                              flush=True)
                        if res['median_s'] > args.max_seconds:
                            too_slow = (f'{size} px took {res["median_s"]:.0f}'
                                        f' s > --max-seconds')
    rows = scaling(results)
    if any(r['time_exponent'] is not None for r in rows):
        print(f'\n{"model":<24}{"mode":<9}{"scan":<10}{"batch":>6}'
              f'{"time exp":>10}{f"(>={HIGH_RES})":>10}{"mem exp":>9}'
              f'{f"(>={HIGH_RES})":>10}')

        def fmt(v):
            return f'{v:.2f}' if v is not None else '-'
        for r in rows:
            if r['time_exponent'] is None:
                continue
            print(f'{r["model"][:23]:<24}{r["mode"]:<9}{r["scan"]:<10}'
                  f'{r["batch_size"]:>6}{fmt(r["time_exponent"]):>10}'
                  f'{fmt(r["time_exponent_high_res"]):>10}'
                  f'{fmt(r["memory_exponent"]):>9}'
                  f'{fmt(r["memory_exponent_high_res"]):>10}')
    extra = dict(merged_from=parts) if parts else {}
    out = write_report(args.device, results, 'backbone', args.out,
                       scaling=rows, **extra,
                       exponent_definition='slope of log(median s) [or '
                       'log(peak MB)] vs log((size/16)^2) by least squares')
    if args.plot != 'none':
        png = args.plot or os.path.splitext(out)[0] + '.png'
        title = (f'{args.device}, batch {"/".join(map(str, args.batch_sizes))}'
                 f'{", AMP" if args.amp else ", fp32"}; median of '
                 f'{args.repeats}')
        if plot(results, png, title):
            print(f'wrote {png}')


if __name__ == '__main__':
    main()
