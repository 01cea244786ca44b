"""Cross-scan / cross-merge: route orders, adjointness, gradients."""
import pytest
import torch

from mmvim.ops import cross_merge, cross_scan


@pytest.mark.parametrize('h,w', [(3, 4), (4, 4), (1, 5), (5, 1)])
def test_routes_follow_the_documented_orders(h, w):
    # a map whose value is its own (h, w) position index h * W + w
    pos = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    ys = cross_scan(pos)[0, :, 0]  # (4, L)
    row_major = [i * w + j for i in range(h) for j in range(w)]
    col_major = [i * w + j for j in range(w) for i in range(h)]
    assert ys[0].tolist() == row_major
    assert ys[1].tolist() == col_major
    assert ys[2].tolist() == row_major[::-1]
    assert ys[3].tolist() == col_major[::-1]


def test_merge_of_scan_is_four_times_the_map():
    x = torch.randn(2, 3, 5, 7)
    ys = cross_scan(x).view(2, 4, 3, 5, 7)
    torch.testing.assert_close(cross_merge(ys), 4 * x.flatten(2))


def test_merge_is_the_adjoint_of_scan():
    """<scan(x), y> == <x, merge(y)> for any x, y (so each is the other's
    gradient)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    y = torch.randn(2, 4, 3, 4, 6, generator=g, dtype=torch.float64)
    lhs = (cross_scan(x).flatten() * y.flatten()).sum()
    rhs = (x.flatten(2) * cross_merge(y)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_unflipped_routes_for_a_scan_that_reverses_them():
    """flip=False: routes 2 and 3 keep the order of routes 0 and 1 (a scan
    with reverse=(False, False, True, True) runs them backwards); the merge
    with the same flag is the adjoint and equals the flipped merge of the
    same outputs put in route order."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    ys = cross_scan(x)
    plain = cross_scan(x, flip=False)
    torch.testing.assert_close(plain[:, :2], ys[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(plain[:, 2:], ys[:, :2], rtol=0, atol=0)
    y = torch.randn(2, 4, 3, 4, 6, generator=g, dtype=torch.float64)
    lhs = (plain.flatten() * y.flatten()).sum()
    rhs = (x.flatten(2) * cross_merge(y, flip=False)).sum()
    torch.testing.assert_close(lhs, rhs)
    in_route_order = y.flatten(3).clone()
    in_route_order[:, 2:] = in_route_order[:, 2:].flip(-1)
    torch.testing.assert_close(
        cross_merge(y, flip=False),
        cross_merge(in_route_order.view(y.shape)))


def test_route_outputs_land_at_their_positions():
    """Route k's output at step t goes back to the pixel route k visited."""
    h, w = 3, 5
    for k in range(4):
        ys = torch.zeros(1, 4, 1, h, w)
        ys.view(1, 4, 1, -1)[0, k, 0] = torch.arange(h * w, dtype=torch.float)
        merged = cross_merge(ys)[0, 0]
        visited = cross_scan(torch.arange(h * w, dtype=torch.float).view(
            1, 1, h, w))[0, k, 0].long()
        # pixel visited at step t receives value t
        expect = torch.empty(h * w)
        expect[visited] = torch.arange(h * w, dtype=torch.float)
        torch.testing.assert_close(merged, expect)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        cross_scan(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r'\(B, 4, C, H, W\)'):
        cross_merge(torch.zeros(2, 3, 1, 4, 4))
