"""What a scan route costs: backbones with each route, and the scan/merge
op alone, against the default order.

    python tools/benchmark_routes.py --out docs/benchmarks/routes_cpu.json
    python tools/benchmark_routes.py --models vmamba_t --size 1024 --modes fwd
    python tools/benchmark_routes.py --device cuda --repeats 10

Backbones (``--models``: presets from ``mmvim.utils.presets``): each case
builds the preset with the route (Vim / MambaVision ``scan_route``, VMamba
``scan_routes``) and times one forward ('fwd', no grad) or forward +
backward ('fwd+bwd', the mean of the outputs) of a ``--size`` image, in a
fresh process: one warm-up, the median of ``--repeats`` calls
(:func:`mmvim.utils.bench.measure`). The table gives each route's time
relative to the model's default route.

Op: VMamba's scan + merge alone, as often as VMamba-T runs it in one
forward at ``--size`` (its 2, 2, 8, 2 mixers on the (1, C, H, W) maps of
its four stages, C = 96 .. 768, stride 4 .. 32): the
default flip/transpose ``cross_scan`` + ``cross_merge``, and the
one-gather ``ScanRoutes.scan`` + ``merge`` for the same four routes and
for the snake, local, atrous and Hilbert route sets (a chain scan -> x 1.5
-> merge, forward or forward + backward).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SNAKE4 = ['snake', 'snake_column', 'snake_rev', 'snake_column_rev']


def cross(route, **kw):
    """VMamba's four routes in the cross-scan pattern for ``route``."""
    t = dict(kw, transpose=True)
    return [dict(type=route, **kw), dict(type=route, **t),
            dict(type=route + '_rev', **kw), dict(type=route + '_rev', **t)]


# model -> [(label, backbone kwargs)]; the first entry is the default
ROUTES = {
    'vim_t': [('raster (default)', {}), ('snake', dict(scan_route='snake')),
              ('hilbert', dict(scan_route='hilbert')),
              ('local', dict(scan_route='local'))],
    'vmamba_t': [('cross (default)', {}),
                 ('snake x4', dict(scan_routes=SNAKE4)),
                 ('local x4', dict(scan_routes=cross('local', window=4))),
                 ('atrous x4', dict(scan_routes=cross('atrous', step=2))),
                 ('hilbert x4', dict(scan_routes=cross('hilbert')))],
    'mambavision_t': [('raster (default)', {}),
                      ('snake', dict(scan_route='snake')),
                      ('hilbert', dict(scan_route='hilbert'))],
}
VMAMBA_T_DIMS = (96, 192, 384, 768)
VMAMBA_T_DEPTHS = (2, 2, 8, 2)


def run_case(model, kwargs, size, mode, device, repeats):
    """Child process: time one backbone case."""
    import torch

    from mmvim.utils.bench import measure
    from mmvim.utils.presets import build_preset
    torch.manual_seed(0)
    net = build_preset(model, img_size=size, **kwargs).to(device)
    net.train(mode == 'fwd+bwd')
    x = torch.randn(1, 3, size, size, device=device)

    def call():
        if mode == 'fwd+bwd':
            sum(o.float().mean() for o in net(x)).backward()
            net.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                net(x)
    return measure(call, repeats, device)


def run_op(impl, size, mode, device, repeats):
    """Child process: time scan + merge as in one VMamba-T forward."""
    import torch

    from mmvim.ops import cross_merge, cross_scan
    from mmvim.ops.routes import DEFAULT_CROSS_ROUTES, ScanRoutes
    from mmvim.utils.bench import measure
    g = torch.Generator().manual_seed(0)
    maps = []
    for i, c in enumerate(VMAMBA_T_DIMS):
        s = -(-size // 2 ** (i + 2))
        maps.append(torch.randn(1, c, s, s, generator=g).to(device)
                    .requires_grad_(mode == 'fwd+bwd'))
    routes = ScanRoutes(OPS[impl] or DEFAULT_CROSS_ROUTES)

    def chain(u):
        b, c, h, w = u.shape
        if impl == 'flip/transpose (default)':
            return cross_merge((cross_scan(u) * 1.5).view(b, 4, c, h, w))
        return routes.merge(routes.scan(u) * 1.5, h, w)

    def call():
        for u, depth in zip(maps, VMAMBA_T_DEPTHS):
            for _ in range(depth):
                if mode == 'fwd+bwd':
                    chain(u).sum().backward()
                else:
                    with torch.no_grad():
                        chain(u)
    return measure(call, repeats, device)


# impl -> the routes of the gather path (None: the default cross scan)
OPS = {'flip/transpose (default)': None, 'gather, same routes': None,
       'gather, snake x4': SNAKE4,
       'gather, local x4': cross('local', window=4),
       'gather, atrous x4': cross('atrous', step=2),
       'gather, hilbert x4': cross('hilbert')}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(ROUTES),
                        choices=list(ROUTES))
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'],
                        choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--no-ops', dest='ops', action='store_false',
                        help='skip the scan/merge op timing')
    parser.add_argument('--ops-only', action='store_true',
                        help='only the scan/merge op timing')
    parser.add_argument('--out', help='JSON path (default '
                        'docs/benchmarks/routes_<device>.json)')
    args = parser.parse_args()
    from mmvim.utils.bench import spawn, write_report
    results = []
    print(f'{"model":<15}{"route":<20}{"mode":<9}{"median s":>10}'
          f'{"vs default":>12}{"peak MB":>9}', flush=True)
    for model in [] if args.ops_only else args.models:
        for mode in args.modes:
            base = None
            for label, kwargs in ROUTES[model]:
                res = spawn('tools.benchmark_routes', 'run_case', model,
                            kwargs, args.size, mode, args.device,
                            args.repeats)
                case = dict(kind='backbone', model=model, route=label,
                            kwargs=kwargs, mode=mode, img_size=args.size,
                            **res)
                results.append(case)
                if 'error' in res:
                    print(f'{model:<15}{label:<20}{mode:<9}  '
                          f'{res["error"][:70]}', flush=True)
                    continue
                base = base or res['median_s']
                case['relative'] = res['median_s'] / base
                print(f'{model:<15}{label:<20}{mode:<9}'
                      f'{res["median_s"]:>10.3f}{case["relative"]:>11.3f}x'
                      f'{res["peak_extra_mb"]:>9.0f}', flush=True)
    if args.ops:
        print(f'\nscan + merge of the {sum(VMAMBA_T_DEPTHS)} mixers of '
              f'VMamba-T at {args.size} px')
        for mode in args.modes:
            base = None
            for impl in OPS:
                res = spawn('tools.benchmark_routes', 'run_op', impl,
                            args.size, mode, args.device, args.repeats)
                case = dict(kind='op', impl=impl, mode=mode,
                            img_size=args.size, **res)
                results.append(case)
                if 'error' in res:
                    print(f'{impl:<36}{mode:<9}  {res["error"][:70]}')
                    continue
                base = base or res['median_s']
                case['relative'] = res['median_s'] / base
                print(f'{impl:<36}{mode:<9}{1e3 * res["median_s"]:>9.1f} ms'
                      f'{case["relative"]:>8.2f}x', flush=True)
    write_report(args.device, results, 'routes', args.out)


if __name__ == '__main__':
    main()
