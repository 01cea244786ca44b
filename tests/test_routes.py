"""Scan routes (mmvim.ops.routes): orders, structure, registry, adjoint."""
import pytest
import torch

from mmvim.ops import cross_merge, cross_scan
from mmvim.ops.routes import (
    DEFAULT_CROSS_ROUTES,
    ROUTES,
    ScanRoutes,
    known_routes,
    register_route,
    route_merge,
    route_order,
    route_orders,
    route_scan,
)

BUILT_IN = ('raster', 'column', 'snake', 'snake_column', 'diagonal', 'local',
            'atrous', 'spiral', 'hilbert')
GRIDS = [(4, 4), (3, 5), (5, 3), (7, 7), (6, 10), (1, 1), (1, 7), (7, 1),
         (2, 9), (9, 2), (8, 16)]
VARIANTS = [dict(), dict(transpose=True)]


def cells(order, w):
    """(row, col) of each visited position."""
    return [(int(p) // w, int(p) % w) for p in order]


def steps(order, w):
    """(|d row|, |d col|) between consecutive positions."""
    c = cells(order, w)
    return [(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(c, c[1:])]


def test_all_built_in_routes_are_registered():
    assert set(BUILT_IN) <= set(known_routes())


@pytest.mark.parametrize('h,w', GRIDS)
@pytest.mark.parametrize('name', BUILT_IN)
@pytest.mark.parametrize('extra', VARIANTS)
def test_every_route_is_a_permutation(name, h, w, extra):
    for kwargs in ([dict()] + ([dict(window=3), dict(window=1)]
                               if name == 'local' else
                               [dict(step=3)] if name == 'atrous' else [])):
        for suffix in ('', '_rev'):
            order = route_order(name + suffix, h, w, **kwargs, **extra)
            assert order.dtype == torch.long and order.shape == (h * w, )
            assert sorted(order.tolist()) == list(range(h * w)), \
                (name, suffix, kwargs, extra)


@pytest.mark.parametrize('h,w', GRIDS)
def test_raster_and_column_are_row_and_column_major(h, w):
    assert route_order('raster', h, w).tolist() == list(range(h * w))
    assert route_order('column', h, w).tolist() == [
        i * w + j for j in range(w) for i in range(h)]


@pytest.mark.parametrize('h,w', GRIDS)
@pytest.mark.parametrize('name', BUILT_IN)
def test_rev_reverses_the_order(name, h, w):
    fwd = route_order(name, h, w)
    assert route_order(name + '_rev', h, w).tolist() == fwd.tolist()[::-1]
    kw = dict(transpose=True)
    assert route_order(name + '_rev', h, w, **kw).tolist() == \
        route_order(name, h, w, **kw).tolist()[::-1]


@pytest.mark.parametrize('h,w', GRIDS)
def test_transpose_swaps_rows_and_columns(h, w):
    t = dict(transpose=True)
    assert torch.equal(route_order('raster', h, w, **t),
                       route_order('column', h, w))
    assert torch.equal(route_order('snake', h, w, **t),
                       route_order('snake_column', h, w))
    # in general: route r transposed on h x w visits (j, i) where r on
    # w x h visits (i, j)
    for name in BUILT_IN:
        plain = cells(route_order(name, w, h), h)
        assert cells(route_order(name, h, w, **t), w) == \
            [(j, i) for i, j in plain]


@pytest.mark.parametrize('h,w', GRIDS)
@pytest.mark.parametrize('name', ['snake', 'snake_column', 'spiral'])
def test_continuous_routes_take_4_neighbour_steps(name, h, w):
    assert all(di + dj == 1 for di, dj in steps(route_order(name, h, w), w))


def test_snake_and_spiral_orders_on_a_small_grid():
    assert route_order('snake', 3, 4).tolist() == [
        0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    assert route_order('snake_column', 3, 2).tolist() == [0, 2, 4, 5, 3, 1]
    # clockwise from the top-left corner inwards
    assert route_order('spiral', 3, 4).tolist() == [
        0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
    assert route_order('spiral', 4, 4).tolist() == [
        0, 1, 2, 3, 7, 11, 15, 14, 13, 12, 8, 4, 5, 6, 10, 9]


@pytest.mark.parametrize('h,w', GRIDS)
def test_diagonal_walks_anti_diagonals_continuously(h, w):
    order = route_order('diagonal', h, w)
    diag = [i + j for i, j in cells(order, w)]
    assert diag == sorted(diag)  # anti-diagonal by anti-diagonal
    for (di, dj), d0, d1 in zip(steps(order, w), diag, diag[1:]):
        if d0 == d1:  # inside a diagonal: one diagonal step
            assert (di, dj) == (1, 1)
        else:  # to the next diagonal: a 4-neighbour step
            assert di + dj == 1
    assert route_order('diagonal', 3, 4).tolist() == [
        0, 1, 4, 8, 5, 2, 3, 6, 9, 10, 7, 11]


@pytest.mark.parametrize('k', [1, 2, 4, 8, 16, 32])
def test_hilbert_is_the_hilbert_curve_on_powers_of_two(k):
    order = route_order('hilbert', k, k)
    assert all(di + dj == 1 for di, dj in steps(order, k))
    if k > 1:  # from the top-left to the top-right corner
        assert order[0] == 0 and order[-1] == k - 1
    # Hilbert locality: each aligned quarter is visited in one piece
    if k >= 2:
        q = k // 2
        quarter = [(i // q) * 2 + j // q for i, j in cells(order, k)]
        runs = [a for a, b in zip(quarter, quarter[1:] + [None]) if a != b]
        assert len(runs) == 4


def test_hilbert_on_any_grid_is_continuous_but_for_one_diagonal_step():
    """The generalised curve takes 4-neighbour steps on every grid, except
    a single diagonal step when the longer side is odd and the shorter
    side even and > 2."""
    for h in range(1, 21):
        for w in range(1, 21):
            s = steps(route_order('hilbert', h, w), w)
            diagonal = [d for d in s if sum(d) != 1]
            assert all(d == (1, 1) for d in diagonal), (h, w)
            long, short = max(h, w), min(h, w)
            expect = int(long % 2 == 1 and short % 2 == 0 and short > 2)
            assert len(diagonal) == expect, (h, w)


@pytest.mark.parametrize('h,w,k', [(7, 10, 3), (5, 5, 4), (8, 8, 4),
                                   (3, 9, 2), (2, 2, 5)])
def test_local_is_windows_in_raster_then_raster_inside(h, w, k):
    order = route_order('local', h, w, window=k)
    expect = sorted(range(h * w),
                    key=lambda p: (p // w // k, p % w // k, p // w, p % w))
    assert order.tolist() == expect
    # each window is one contiguous run of the sequence
    win = [(i // k, j // k) for i, j in cells(order, w)]
    assert len([a for a, b in zip(win, win[1:] + [None]) if a != b]) == \
        -(-h // k) * -(-w // k)


@pytest.mark.parametrize('h,w,s', [(7, 10, 2), (6, 6, 3), (5, 3, 2),
                                   (1, 7, 2), (4, 4, 1)])
def test_atrous_is_the_interleaved_sub_grids_one_after_another(h, w, s):
    order = route_order('atrous', h, w, step=s)
    expect = sorted(range(h * w),
                    key=lambda p: (p // w % s, p % w % s, p // w, p % w))
    assert order.tolist() == expect


def test_default_kwargs_and_dict_specs():
    assert torch.equal(route_order('local', 9, 9),
                       route_order('local', 9, 9, window=4))
    assert torch.equal(route_order('atrous', 9, 9),
                       route_order('atrous', 9, 9, step=2))
    assert torch.equal(route_order(dict(type='local', window=3), 9, 9),
                       route_order('local', 9, 9, window=3))
    assert not torch.equal(route_order('local', 9, 9, window=3),
                           route_order('local', 9, 9))


def test_orders_are_cached_per_name_size_and_kwargs():
    a = route_order('hilbert', 13, 11)
    assert route_order('hilbert', 13, 11) is a
    assert route_order('local', 13, 11, window=3) is \
        route_order('local', 13, 11, window=3)
    assert route_order('local', 13, 11, window=3) is not \
        route_order('local', 13, 11, window=2)
    orders, inverse = route_orders(['snake', 'hilbert_rev'], 5, 6)
    assert route_orders(['snake', 'hilbert_rev'], 5, 6)[0] is orders
    assert torch.equal(orders[1], route_order('hilbert_rev', 5, 6))
    assert torch.equal(orders.gather(1, inverse),
                       torch.arange(30).expand(2, 30))


def test_unknown_route_is_a_clear_error_listing_the_known_ones():
    with pytest.raises(ValueError, match='unknown scan route') as info:
        route_order('zigzag', 4, 4)
    for name in BUILT_IN:
        assert name in str(info.value)
    assert '_rev' in str(info.value) and 'register_route' in str(info.value)
    with pytest.raises(ValueError, match='unknown scan route'):
        ScanRoutes(['raster', 'snek'])
    with pytest.raises(TypeError, match='dict'):
        route_order(dict(window=3), 4, 4)
    with pytest.raises(ValueError, match='window'):
        route_order('local', 4, 4, window=0)
    with pytest.raises(ValueError, match='1x1'):
        route_order('raster', 0, 4)


@pytest.fixture
def user_route():
    """Register a route for one test, removed afterwards."""
    names = []

    def register(fn, name):
        register_route(name)(fn)
        names.append(name)
        return name
    yield register
    for name in names:
        ROUTES._module_dict.pop(name, None)


def test_user_registered_route(user_route):
    def bottom_up(h, w):
        return [i * w + j for i in reversed(range(h)) for j in range(w)]
    user_route(bottom_up, 'test_bottom_up')
    assert 'test_bottom_up' in known_routes()
    assert route_order('test_bottom_up', 2, 3).tolist() == [3, 4, 5, 0, 1, 2]
    assert route_order('test_bottom_up_rev', 2, 3).tolist() == [
        2, 1, 0, 5, 4, 3]
    with pytest.raises(KeyError, match='already registered'):
        register_route('test_bottom_up')(bottom_up)
    with pytest.raises(ValueError, match='_rev'):
        register_route('my_rev')(bottom_up)


def test_a_route_that_is_no_permutation_is_a_clear_error(user_route):
    user_route(lambda h, w: [0] * (h * w), 'test_broken')
    with pytest.raises(ValueError, match='permutation'):
        route_order('test_broken', 3, 3)


# ---------------------------------------------------------------------------
# applying K routes: gather and adjoint
ROUTE_SETS = [DEFAULT_CROSS_ROUTES,
              ('snake', 'snake_column', 'snake_rev', 'snake_column_rev'),
              ('hilbert', ),
              (dict(type='local', window=3), 'atrous_rev', 'spiral')]


@pytest.mark.parametrize('routes', ROUTE_SETS)
@pytest.mark.parametrize('h,w', [(5, 7), (4, 4), (1, 6), (6, 1)])
def test_scan_follows_the_orders(routes, h, w):
    x = torch.randn(2, 3, h, w)
    r = ScanRoutes(routes)
    ys = r.scan(x)
    assert ys.shape == (2, len(routes), 3, h * w)
    for k, route in enumerate(routes):
        assert torch.equal(ys[:, k], x.flatten(2)[:, :, route_order(
            route, h, w)])


@pytest.mark.parametrize('routes', ROUTE_SETS)
@pytest.mark.parametrize('h,w', [(5, 7), (1, 6), (6, 1)])
def test_merge_is_the_exact_adjoint_of_scan(routes, h, w):
    """<scan(x), y> == <x, merge(y)> for any x, y."""
    g = torch.Generator().manual_seed(0)
    k = len(routes)
    x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
    y = torch.randn(2, k, 3, h * w, generator=g, dtype=torch.float64)
    r = ScanRoutes(routes)
    lhs = (r.scan(x) * y).sum()
    rhs = (x.flatten(2) * r.merge(y, h, w)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    # merge(scan(x)) counts each position once per route
    torch.testing.assert_close(r.merge(r.scan(x), h, w), k * x.flatten(2))


def test_autograd_through_scan_and_merge():
    """Each is the other's gradient (a custom autograd pair): gradcheck,
    and twice differentiable."""
    orders, inverse = route_orders(('hilbert', 'snake_rev', 'local'), 3, 5)
    x = torch.randn(2, 2, 15, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 2, 15, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: route_scan(t, orders, inverse), (x, ))
    assert torch.autograd.gradcheck(
        lambda t: route_merge(t, orders, inverse), (y, ))
    assert torch.autograd.gradgradcheck(
        lambda t: route_merge(route_scan(t, orders, inverse) ** 2, orders,
                              inverse), (x, ))


def test_default_routes_reproduce_cross_scan_and_cross_merge():
    x = torch.randn(2, 3, 5, 7)
    r = ScanRoutes(DEFAULT_CROSS_ROUTES)
    assert torch.equal(r.scan(x), cross_scan(x))
    ys = torch.randn(2, 4, 3, 35)
    torch.testing.assert_close(r.merge(ys, 5, 7),
                               cross_merge(ys.view(2, 4, 3, 5, 7)))


def test_scan_routes_equality_and_names():
    r = ScanRoutes(['raster', dict(type='local', window=2)])
    assert len(r) == 2
    assert r == ['raster', dict(type='local', window=2)]
    assert r != ['raster', dict(type='local', window=3)]
    assert r.names == ('raster', 'local(window=2)')
    assert ScanRoutes('snake') == 'snake'


def test_replacing_a_route_clears_the_caches(user_route):
    user_route(lambda h, w: list(range(h * w)), 'test_replaced')
    before = route_orders(['test_replaced'], 2, 2)[0]
    assert before.tolist() == [[0, 1, 2, 3]]
    register_route('test_replaced', force=True)(
        lambda h, w: list(range(h * w))[::-1])
    assert route_order('test_replaced', 2, 2).tolist() == [3, 2, 1, 0]
    assert route_orders(['test_replaced'], 2, 2)[0].tolist() == \
        [[3, 2, 1, 0]]
