"""Backbone throughput and peak memory (forward, forward+backward).

    python tools/benchmark.py --models vim_t vim_s --img-size 512 --batch-size 1
    python tools/benchmark.py --device cuda --batch-size 8 --amp   # on a GPU
    python tools/benchmark.py --compare-fused                      # Vim scans

Each case runs in a fresh process: one warm-up, then the median of
``--repeats`` timed calls; images/s = batch / median. ``--compare-fused``
also times Vim with its two scan directions in two calls
(``fused_scan=False``) instead of one grouped call. Prints a table and writes
JSON (default docs/benchmarks/backbone_<device>.json).
"""
import argparse

# name: (class, kwargs) of the backbones as used for dense prediction
MODELS = {
    'vim_t': ('Vim', dict(arch='tiny', out_indices=(5, 11, 17, 23))),
    'vim_s': ('Vim', dict(arch='small', out_indices=(5, 11, 17, 23))),
    'vim_b': ('Vim', dict(arch='base', out_indices=(5, 11, 17, 23))),
    'vmamba_t': ('VMamba', dict(arch='tiny')),
    'vmamba_s': ('VMamba', dict(arch='small')),
    'vmamba_b': ('VMamba', dict(arch='base')),
    'mambavision_t': ('MambaVision', dict(arch='T')),
    'mambavision_s': ('MambaVision', dict(arch='S')),
    'mambavision_b': ('MambaVision', dict(arch='B')),
}


def run_case(name, img_size, batch, mode, device, amp, fused, repeats):
    """Runs in the child process; returns a dict of measurements."""
    import torch

    import mmvim.models as models
    from mmvim.utils.bench import measure
    cls_name, kwargs = MODELS[name]
    kwargs = dict(kwargs, img_size=img_size)
    if cls_name != 'Vim':
        kwargs.pop('img_size')
    if fused is not None and cls_name == 'Vim':
        kwargs['fused_scan'] = fused
    torch.manual_seed(0)
    model = getattr(models, cls_name)(**kwargs).to(device)
    model.train(mode == 'fwd+bwd')
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    dtype = torch.bfloat16 if device == 'cpu' else torch.float16

    def call():
        with torch.autocast(device.split(':')[0], dtype=dtype,
                            enabled=amp):
            if mode == 'fwd+bwd':
                outs = model(x)
                sum(o.float().mean() for o in outs).backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model(x)

    res = measure(call, repeats, device)
    res['images_per_s'] = batch / res['median_s']
    res['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
    return res


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['vim_t', 'vim_s'],
                        choices=sorted(MODELS))
    parser.add_argument('--img-size', type=int, default=512)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true',
                        help='autocast (bf16 on CPU, fp16 on CUDA)')
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'],
                        choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--compare-fused', action='store_true')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', help='JSON output path')
    args = parser.parse_args()
    from mmvim.utils.bench import spawn, write_report

    variants = [True, False] if args.compare_fused else [None]
    results = []
    print(f'{"model":<15}{"mode":<9}{"scan":<10}{"median s":>10}'
          f'{"img/s":>9}{"peak MB":>10}')
    for name in args.models:
        for mode in args.modes:
            for fused in variants:
                res = spawn('tools.benchmark', 'run_case', name,
                            args.img_size, args.batch_size, mode,
                            args.device, args.amp, fused, args.repeats)
                scan = {None: 'default', True: 'fused',
                        False: 'separate'}[fused]
                results.append(dict(model=name, mode=mode, scan=scan,
                                    img_size=args.img_size,
                                    batch_size=args.batch_size,
                                    amp=args.amp, **res))
                if 'error' in res:
                    print(f'{name:<15}{mode:<9}{scan:<10}  {res["error"]}')
                    continue
                print(f'{name:<15}{mode:<9}{scan:<10}{res["median_s"]:>10.3f}'
                      f'{res["images_per_s"]:>9.2f}'
                      f'{res["peak_extra_mb"]:>10.0f}', flush=True)
    write_report(args.device, results, 'backbone', args.out)


if __name__ == '__main__':
    main()
