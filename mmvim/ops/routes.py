"""Scan routes: the orders in which a 2-D token grid becomes a 1-D sequence.

How an image becomes a sequence is the main design axis of vision Mamba
models; each paper hard-codes its own order. Here an order is a *route*,
named in configs and backbone arguments as a string or
``dict(type=name, **kwargs)``::

    VMamba(scan_routes=('snake', 'snake_column', 'snake_rev',
                        'snake_column_rev'))
    Vim(scan_route='hilbert')
    MambaVision(scan_route=dict(type='local', window=4))

:func:`route_order` ``(name, h, w, **kwargs)`` returns a LongTensor of
length ``h * w`` whose entry ``t`` is the row-major flat index ``i * w + j``
of the ``t``-th grid position visited (cached per name, size and kwargs).
The built-in routes, on an h x w grid with rows i and columns j:

=============  ==============================================================
route          order
=============  ==============================================================
raster         row-major: each row left to right, rows top to bottom
column         column-major: each column top to bottom, left to right
snake          rows alternate direction (even rows left to right, odd rows
               right to left), so consecutive positions are 4-neighbours
               (PlainMamba / ZigMa's zigzag)
snake_column   the same with columns (even columns down, odd columns up)
diagonal       anti-diagonals i + j = 0, 1, ..., alternating direction
               (JPEG's zigzag): within a diagonal the steps are diagonal,
               between diagonals a 4-neighbour step (8-neighbour path)
local          ``window=k`` (default 4): k x k windows in raster order,
               raster inside each window; edge windows are cut to fit
               (LocalMamba)
atrous         ``step=s`` (default 2): the s x s interleaved sub-grids
               (i % s, j % s) = (0, 0), (0, 1), ..., (s-1, s-1), one after
               another, each in raster order (EfficientVMamba's ES2D
               skip sampling)
spiral         clockwise from the top-left corner inwards (4-neighbour steps)
hilbert        generalised Hilbert curve ("gilbert") for any h x w, from the
               top-left corner; the classic Hilbert curve with 4-neighbour
               steps on 2^k x 2^k grids
=============  ==============================================================

Any name with the suffix ``_rev`` is that route reversed (``raster_rev``,
``snake_column_rev``, ...). Every route also takes ``transpose=True``: the
route run on the transposed grid, rows and columns swapped (``column`` is
``raster`` transposed, ``snake_column`` is ``snake`` transposed). VMamba's
four routes follow one pattern, {r, r transposed, r reversed, r transposed
and reversed}, which any route can fill, e.g. for ``local``::

    scan_routes=('local', dict(type='local', transpose=True), 'local_rev',
                 dict(type='local_rev', transpose=True))

Routes are an mmengine :class:`~mmengine.registry.Registry`, ``ROUTES``. A
route is a function ``(h, w, **kwargs) -> sequence of flat indices``; add
one in your own project with :func:`register_route` and import it from the
config with ``custom_imports``::

    # my_project/routes.py
    from mmvim.ops.routes import register_route

    @register_route()
    def boustrophedon_down(h, w):
        ...                    # any permutation of range(h * w)

    # config
    custom_imports = dict(imports=['mmvim', 'my_project.routes'])
    model = dict(backbone=dict(scan_route='boustrophedon_down'))

:func:`route_scan` and :func:`route_merge` apply K routes at once: one
gather turns a map (B, C, H, W) into (B, K, C, H*W) sequences, and its exact
adjoint gathers per-route outputs back to their positions and sums them.
Each is the other's gradient (a custom autograd function), so a route costs
one gather forward and one backward, whatever K.
"""
from __future__ import annotations

import functools
from typing import (
    Callable,
    Dict,
    Hashable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
from mmengine.registry import Registry
from torch import Tensor

__all__ = ['ROUTES', 'register_route', 'route_order', 'known_routes',
           'parse_route', 'route_name', 'normalize_routes', 'route_orders',
           'route_scan', 'route_merge', 'ScanRoutes', 'RouteSpec',
           'DEFAULT_CROSS_ROUTES']

#: A route as configs write it: a name or ``dict(type=name, **kwargs)``.
RouteSpec = Union[str, dict]

ROUTES = Registry('scan route', scope='mmvim')

REV = '_rev'

#: VMamba's four-way cross scan (the released models): row-major,
#: column-major and both reversed.
DEFAULT_CROSS_ROUTES = ('raster', 'column', 'raster_rev', 'column_rev')


def register_route(name: Optional[str] = None, force: bool = False
                   ) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(h, w, **kwargs)`` as a scan route called
    ``name`` (default: the function's name). The function returns the
    row-major flat indices ``i * w + j`` in visiting order (a sequence or a
    1-D tensor; :func:`route_order` checks that it is a permutation).
    ``force=True`` replaces a registered route of that name."""
    def wrap(fn: Callable) -> Callable:
        key = name or fn.__name__
        if key.endswith(REV) and not force:
            raise ValueError(f'scan route name {key!r} ends with {REV!r}, '
                             'which means "reversed"; pick another name')
        ROUTES.register_module(name=key, force=force, module=fn)
        if force:  # a replaced route must not be served from the caches
            _cached_order.cache_clear()
            _stacked.cache_clear()
        return fn
    return wrap


def known_routes() -> List[str]:
    """Sorted names of the registered routes (each also takes ``_rev``)."""
    return sorted(ROUTES.module_dict)


# ---------------------------------------------------------------------------
# the built-in routes
def _grid(h: int, w: int) -> Tensor:
    return torch.arange(h * w).view(h, w)


@register_route()
def raster(h: int, w: int) -> Tensor:
    """Row-major."""
    return torch.arange(h * w)


@register_route()
def column(h: int, w: int) -> Tensor:
    """Column-major."""
    return _grid(h, w).t().reshape(-1)


@register_route()
def snake(h: int, w: int) -> Tensor:
    """Rows alternate direction: row 0 left to right, row 1 right to left."""
    g = _grid(h, w).clone()
    g[1::2] = g[1::2].flip(1)
    return g.reshape(-1)


@register_route()
def snake_column(h: int, w: int) -> Tensor:
    """Columns alternate direction: column 0 down, column 1 up."""
    g = _grid(h, w).t().clone()
    g[1::2] = g[1::2].flip(1)
    return g.reshape(-1)


@register_route()
def diagonal(h: int, w: int) -> List[int]:
    """Anti-diagonals i + j = d for d = 0, 1, ...; even d upwards (i
    decreasing), odd d downwards, so each diagonal starts next to where the
    previous one ended."""
    order = []
    for d in range(h + w - 1):
        rows = range(max(0, d - w + 1), min(h - 1, d) + 1)
        if d % 2 == 0:
            rows = reversed(rows)
        order.extend(i * w + d - i for i in rows)
    return order


@register_route()
def local(h: int, w: int, window: int = 4) -> List[int]:
    """``window`` x ``window`` tiles in raster order, raster inside each
    tile; the last row / column of tiles is cut to the grid."""
    if int(window) < 1:
        raise ValueError(f"scan route 'local': window must be >= 1, got "
                         f'{window!r}')
    k = int(window)
    order = []
    for i0 in range(0, h, k):
        for j0 in range(0, w, k):
            for i in range(i0, min(i0 + k, h)):
                order.extend(range(i * w + j0, i * w + min(j0 + k, w)))
    return order


@register_route()
def atrous(h: int, w: int, step: int = 2) -> List[int]:
    """The ``step`` x ``step`` interleaved sub-grids {(i, j): i % s = a,
    j % s = b} for (a, b) in raster order, each in raster order."""
    if int(step) < 1:
        raise ValueError(f"scan route 'atrous': step must be >= 1, got "
                         f'{step!r}')
    s = int(step)
    g = _grid(h, w)
    return torch.cat([g[a::s, b::s].reshape(-1) for a in range(s)
                      for b in range(s)]).tolist()


@register_route()
def spiral(h: int, w: int) -> List[int]:
    """Clockwise from the top-left corner inwards: along the top row, down
    the right column, back along the bottom row, up the left column, then
    the same one ring further in."""
    order = []
    top, bottom, left, right = 0, h - 1, 0, w - 1
    while top <= bottom and left <= right:
        order.extend(top * w + j for j in range(left, right + 1))
        order.extend(i * w + right for i in range(top + 1, bottom + 1))
        if top < bottom:
            order.extend(bottom * w + j for j in range(right - 1, left - 1,
                                                       -1))
        if left < right:
            order.extend(i * w + left for i in range(bottom - 1, top, -1))
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return order


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int
             ) -> Iterator[Tuple[int, int]]:
    """Generalised Hilbert curve over the rectangle spanned from corner
    (x, y) by the major axis (ax, ay) and the minor axis (bx, by) (one of
    each pair is 0), after J. Cerveny's "gilbert" construction: a strip of
    width 1 is walked straight; a long rectangle is cut into two halves
    along its major axis; otherwise it becomes three sub-rectangles (up the
    first half of the minor axis, across, and back down), with halves
    rounded to even lengths where possible so that the pieces join with
    4-neighbour steps."""
    length, width = abs(ax + ay), abs(bx + by)
    dax, day = _sign(ax), _sign(ay)  # unit step along the major axis
    dbx, dby = _sign(bx), _sign(by)  # unit step along the minor axis
    if width == 1 or length == 1:
        sx, sy, n = (dax, day, length) if width == 1 else (dbx, dby, width)
        for _ in range(n):
            yield x, y
            x, y = x + sx, y + sy
        return
    hax, hay = ax // 2, ay // 2
    hbx, hby = bx // 2, by // 2
    half_len, half_width = abs(hax + hay), abs(hbx + hby)
    if 2 * length > 3 * width:
        if half_len % 2 and length > 2:
            hax, hay = hax + dax, hay + day
        yield from _gilbert(x, y, hax, hay, bx, by)
        yield from _gilbert(x + hax, y + hay, ax - hax, ay - hay, bx, by)
        return
    if half_width % 2 and width > 2:
        hbx, hby = hbx + dbx, hby + dby
    yield from _gilbert(x, y, hbx, hby, hax, hay)
    yield from _gilbert(x + hbx, y + hby, ax, ay, bx - hbx, by - hby)
    yield from _gilbert(x + (ax - dax) + (hbx - dbx),
                        y + (ay - day) + (hby - dby),
                        -hbx, -hby, -(ax - hax), -(ay - hay))


@register_route()
def hilbert(h: int, w: int) -> List[int]:
    """Generalised Hilbert curve from the top-left corner (x = column j,
    y = row i), along the longer side first."""
    if w >= h:
        points = _gilbert(0, 0, w, 0, 0, h)
    else:
        points = _gilbert(0, 0, 0, h, w, 0)
    return [y * w + x for x, y in points]


# ---------------------------------------------------------------------------
# names, specs and the cache
def parse_route(route: RouteSpec) -> Tuple[str, Dict]:
    """A route spec (name or ``dict(type=name, **kwargs)``) -> (name,
    kwargs)."""
    if isinstance(route, str):
        return route, {}
    if isinstance(route, dict) and isinstance(route.get('type'), str):
        kwargs = dict(route)
        return kwargs.pop('type'), kwargs
    raise TypeError(f'a scan route is a name or dict(type=name, **kwargs), '
                    f'got {route!r}')


def route_name(route: RouteSpec) -> str:
    """Short display name: 'snake', 'local(window=4)'."""
    name, kwargs = parse_route(route)
    if not kwargs:
        return name
    args = ', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))
    return f'{name}({args})'


def _resolve(name: str) -> Tuple[Callable, bool]:
    """The registered function of ``name`` and whether it is reversed."""
    routes = ROUTES.module_dict
    if name in routes:
        return routes[name], False
    if name.endswith(REV) and name[:-len(REV)] in routes:
        return routes[name[:-len(REV)]], True
    raise ValueError(
        f'unknown scan route {name!r}. Known routes: '
        f'{", ".join(known_routes())} (each also reversed with the suffix '
        f'{REV!r}, e.g. {known_routes()[0] + REV!r}). Register your own '
        'with @mmvim.ops.routes.register_route() and import it through '
        "custom_imports=dict(imports=[...]) in the config.")


def _freeze(kwargs: Dict) -> Tuple[Tuple[str, Hashable], ...]:
    try:
        frozen = tuple(sorted(kwargs.items()))
        hash(frozen)
    except TypeError:
        raise TypeError(f'scan route arguments must be hashable, got '
                        f'{kwargs!r}') from None
    return frozen


@functools.lru_cache(maxsize=256)
def _cached_order(fn: Callable, reverse: bool, name: str, h: int, w: int,
                  frozen: Tuple) -> Tensor:
    kwargs = dict(frozen)
    transpose = bool(kwargs.pop('transpose', False))
    gh, gw = (w, h) if transpose else (h, w)
    order = fn(gh, gw, **kwargs)
    order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
    n = h * w
    if order.numel() != n or not torch.equal(
            torch.sort(order).values, torch.arange(n)):
        raise ValueError(
            f'scan route {name!r} on a {gh}x{gw} grid did not return a '
            f'permutation of range({n}) (got {order.numel()} indices); a '
            'route must visit every position i * w + j exactly once')
    if transpose:  # position (i', j') of the w x h grid is (j', i') here
        order = (order % gw) * w + order // gw
    if reverse:
        order = order.flip(0)
    return order


def route_order(name: RouteSpec, h: int, w: int, **kwargs) -> Tensor:
    """Visiting order of route ``name`` on an ``h`` x ``w`` grid.

    Args:
        name: a registered route, optionally with the suffix ``_rev``; a
            ``dict(type=name, **kwargs)`` spec is accepted too.
        h, w: grid size (>= 1 each).
        **kwargs: the route's arguments (``local``: ``window``, ``atrous``:
            ``step``), and ``transpose=True`` for any route: the route of
            the transposed (w x h) grid, mapped back.

    Returns:
        LongTensor (h * w,) on the CPU: entry t is the row-major flat index
        ``i * w + j`` of the t-th position visited. Cached per (name, h, w,
        kwargs) and shared between callers: do not modify it in place.
    """
    if not isinstance(name, str):
        name, spec_kwargs = parse_route(name)
        kwargs = {**spec_kwargs, **kwargs}
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f'route_order: grid must be at least 1x1, got '
                         f'{h}x{w}')
    fn, reverse = _resolve(name)
    return _cached_order(fn, reverse, name, h, w, _freeze(kwargs))


def normalize_routes(routes: Union[RouteSpec, Sequence[RouteSpec]]
                     ) -> Tuple[Tuple[str, Tuple], ...]:
    """Routes -> a hashable tuple of (name, frozen kwargs); every name is
    checked now so that a typo fails when the model is built."""
    if isinstance(routes, (str, dict)):
        routes = (routes,)
    out = []
    for route in routes:
        name, kwargs = parse_route(route)
        _resolve(name)
        out.append((name, _freeze(kwargs)))
    if not out:
        raise ValueError('at least one scan route is needed')
    return tuple(out)


@functools.lru_cache(maxsize=64)  # device tensors: a few sizes per model
def _stacked(routes: Tuple[Tuple[str, Tuple], ...], h: int, w: int,
             device: torch.device) -> Tuple[Tensor, Tensor]:
    orders = torch.stack([route_order(name, h, w, **dict(frozen))
                          for name, frozen in routes])
    inverse = torch.argsort(orders, dim=1)
    return orders.to(device), inverse.to(device)


def route_orders(routes: Union[RouteSpec, Sequence[RouteSpec]], h: int,
                 w: int, device: Union[str, torch.device, None] = None
                 ) -> Tuple[Tensor, Tensor]:
    """(K, h*w) orders of K routes and their inverse permutations
    (``inverse[k, p]`` = the step at which route k visits position p), on
    ``device``; cached per routes, size and device."""
    key = normalize_routes(routes)
    return _stacked(key, int(h), int(w), torch.device(device or 'cpu'))


# ---------------------------------------------------------------------------
# applying routes: one gather, and its adjoint
def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B, 1 or K, C, L), index (K, L) -> (B, K, C, L) with
    out[b, k, c, t] = x[b, k or 0, c, index[k, t]]."""
    k, length = index.shape
    b, _, c, _ = x.shape
    return torch.gather(x.expand(b, k, c, x.shape[-1]), 3,
                        index.view(1, k, 1, length).expand(b, k, c, length))


class _RouteScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, orders: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(orders, inverse)
        return _gather(x.unsqueeze(1), orders)

    @staticmethod
    def backward(ctx, grad: Tensor):
        orders, inverse = ctx.saved_tensors
        return _RouteMerge.apply(grad, orders, inverse), None, None


class _RouteMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys: Tensor, orders: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(orders, inverse)
        return _gather(ys, inverse).sum(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        orders, inverse = ctx.saved_tensors
        return _RouteScan.apply(grad, orders, inverse), None, None


def route_scan(x: Tensor, orders: Tensor, inverse: Tensor) -> Tensor:
    """Sequences of K routes in one gather.

    Args:
        x: (B, C, L) tokens, L = h * w in row-major order.
        orders, inverse: (K, L) from :func:`route_orders`.

    Returns:
        (B, K, C, L): ``out[:, k, :, t] = x[:, :, orders[k, t]]``.
    """
    return _RouteScan.apply(x, orders, inverse)


def route_merge(ys: Tensor, orders: Tensor, inverse: Tensor) -> Tensor:
    """Adjoint of :func:`route_scan`: per-route outputs (B, K, C, L) in each
    route's own order -> (B, C, L) row-major, summed over the routes at each
    position (``out[:, :, p] = sum_k ys[:, k, :, inverse[k, p]]``)."""
    return _RouteMerge.apply(ys, orders, inverse)


class ScanRoutes:
    """K routes as a backbone holds them: normalised and checked when the
    model is built, applied to any grid size at run time.

    Args:
        routes: one route or a sequence of routes (names or
            ``dict(type=name, **kwargs)``).

    ``orders(h, w, device)`` gives the cached (K, h*w) orders and inverse
    permutations; ``scan``/``merge`` apply all K routes in one gather (see
    :func:`route_scan`, :func:`route_merge`).
    """

    def __init__(self, routes: Union[RouteSpec, Sequence[RouteSpec]]
                 ) -> None:
        self.key = normalize_routes(routes)
        self.names = tuple(route_name(dict(type=n, **dict(f)) if f else n)
                           for n, f in self.key)

    def __len__(self) -> int:
        return len(self.key)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ScanRoutes):
            other = ScanRoutes(other)
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f'ScanRoutes({", ".join(self.names)})'

    def orders(self, h: int, w: int, device: Union[str, torch.device, None]
               = None) -> Tuple[Tensor, Tensor]:
        """(K, h*w) orders and their inverse permutations on ``device``."""
        return _stacked(self.key, int(h), int(w),
                        torch.device(device or 'cpu'))

    def scan(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, K, C, H*W), route k's sequence at [:, k]."""
        orders, inverse = self.orders(*x.shape[-2:], x.device)
        return route_scan(x.flatten(2), orders, inverse)

    def merge(self, ys: Tensor, h: int, w: int) -> Tensor:
        """(B, K, C, h*w) per-route outputs -> (B, C, h*w) row-major, summed
        over the routes (the adjoint of :meth:`scan`)."""
        orders, inverse = self.orders(h, w, ys.device)
        return route_merge(ys, orders, inverse)
