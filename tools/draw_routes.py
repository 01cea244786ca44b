"""Draw scan routes on a small grid (one panel per route), as a PNG.

    python tools/draw_routes.py --grid 8 8 --out docs/scan_routes/routes_8x8.png
    python tools/draw_routes.py --grid 6 9 --routes hilbert snake diagonal \\
        --out routes_6x9.png
    python tools/draw_routes.py --routes local:window=3 atrous:step=3 my_route \\
        --imports my_project.routes

Each panel shows the grid's cells, the path through their centres coloured
from the first position (dark) to the last (light), a dot at the start and
the step number in each cell. Steps to a 4-neighbour are thick, diagonal
steps thin, and jumps (local / atrous, row ends of raster) dashed.
A route is a registered name (with optional ``_rev``), optionally with
``:key=value,...`` arguments (``local:window=3``, ``hilbert:transpose=1``).
"""
import argparse
import importlib
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_ROUTES = ('raster', 'column', 'snake', 'snake_column', 'diagonal',
                  'local', 'atrous', 'spiral', 'hilbert')


def parse(text):
    """'local:window=3' -> ('local', {'window': 3})."""
    name, _, args = text.partition(':')
    kwargs = {}
    for item in filter(None, args.split(',')):
        key, _, value = item.partition('=')
        try:
            kwargs[key] = int(value)
        except ValueError:
            kwargs[key] = value
    return name, kwargs


def draw(routes, h, w, out, cols=None, numbers=True):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from mmvim.ops.routes import route_name, route_order
    cols = cols or min(len(routes), 3)
    rows = math.ceil(len(routes) / cols)
    cell = 0.42
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(cols * (w * cell + 0.6),
                                      rows * (h * cell + 0.9)))
    cmap = plt.get_cmap('viridis')
    for ax in axes.flat[len(routes):]:
        ax.axis('off')
    for ax, (name, kwargs) in zip(axes.flat, routes):
        order = route_order(name, h, w, **kwargs).tolist()
        ys = [p // w for p in order]
        xs = [p % w for p in order]
        n = len(order)
        for i in range(h + 1):
            ax.plot([-0.5, w - 0.5], [i - 0.5, i - 0.5], color='0.85', lw=0.6)
        for j in range(w + 1):
            ax.plot([j - 0.5, j - 0.5], [-0.5, h - 0.5], color='0.85', lw=0.6)
        segs, colors, styles = [], [], []
        for t in range(n - 1):
            segs.append([(xs[t], ys[t]), (xs[t + 1], ys[t + 1])])
            colors.append(cmap(0.85 * t / max(n - 2, 1)))
            dx, dy = abs(xs[t] - xs[t + 1]), abs(ys[t] - ys[t + 1])
            near = dx + dy == 1  # 4-neighbours: thick
            touching = max(dx, dy) == 1  # diagonal neighbours: thin
            styles.append('solid' if touching else (0, (2, 2)))
            ax.add_collection(LineCollection(
                [segs[-1]], colors=[colors[-1]], linestyles=[styles[-1]],
                linewidths=2.2 if near else 1.2 if touching else 0.9))
        ax.plot(xs[0], ys[0], 'o', color=cmap(0.0), ms=7, zorder=3)
        ax.plot(xs[-1], ys[-1], 's', color=cmap(0.85), ms=6, zorder=3)
        if numbers and h * w <= 100:
            for t in range(n):
                ax.text(xs[t] + 0.22, ys[t] - 0.18, str(t), fontsize=5.5,
                        color='0.35', ha='center', va='center')
        ax.set_xlim(-0.6, w - 0.4)
        ax.set_ylim(h - 0.4, -0.6)  # row 0 at the top
        ax.set_aspect('equal')
        ax.set_xticks([])
        ax.set_yticks([])
        label = route_name(dict(type=name, **kwargs)) if kwargs else name
        ax.set_title(label, fontsize=9)
    fig.suptitle(f'scan routes on a {h}x{w} grid (dot: first position, '
                 'square: last; thin: a diagonal step; dashed: a jump)', fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--grid', type=int, nargs=2, default=(8, 8),
                        metavar=('H', 'W'))
    parser.add_argument('--routes', nargs='+', default=list(DEFAULT_ROUTES),
                        help='names, optionally name:key=value,...')
    parser.add_argument('--imports', nargs='*', default=[],
                        help='modules that register more routes')
    parser.add_argument('--cols', type=int, help='panels per row')
    parser.add_argument('--no-numbers', action='store_true',
                        help='do not print the step numbers')
    parser.add_argument('--out', default='routes.png')
    args = parser.parse_args()
    for module in args.imports:
        importlib.import_module(module)
    from mmvim.ops.routes import route_order
    h, w = args.grid
    routes = [parse(r) for r in args.routes]
    for name, kwargs in routes:
        try:
            route_order(name, h, w, **kwargs)
        except (ValueError, TypeError) as exc:
            parser.error(str(exc))
    print('wrote', draw(routes, h, w, args.out, args.cols,
                        not args.no_numbers))


if __name__ == '__main__':
    main()
