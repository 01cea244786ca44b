import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from mmvim.ops import causal_conv1d


def reference_causal_conv(x, weight, bias, activation):
    """out[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - (w-1) + k]."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = torch.zeros(batch, dim, length, dtype=torch.float64)
    for t in range(length):
        for k in range(width):
            src = t - (width - 1) + k
            if src >= 0:
                out[:, :, t] += weight[:, k].double() * x[:, :, src].double()
    if bias is not None:
        out += bias.double()[:, None]
    if activation is not None:
        out = F.silu(out)
    return out


@pytest.mark.parametrize('width', [2, 4])
@pytest.mark.parametrize('with_bias', [True, False])
@pytest.mark.parametrize('activation', [None, 'silu', 'swish'])
def test_matches_reference(width, with_bias, activation):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 11, generator=gen)
    weight = torch.randn(6, width, generator=gen)
    bias = torch.randn(6, generator=gen) if with_bias else None
    out = causal_conv1d(x, weight, bias, activation)
    ref = reference_causal_conv(x, weight, bias, activation)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_is_causal():
    """Changing x at time t never changes outputs before t."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 20, generator=gen)
    weight = torch.randn(3, 4, generator=gen)
    base = causal_conv1d(x, weight, activation='silu')
    x2 = x.clone()
    x2[..., 12] += 5.0
    changed = causal_conv1d(x2, weight, activation='silu')
    torch.testing.assert_close(base[..., :12], changed[..., :12])
    assert not torch.allclose(base[..., 12], changed[..., 12])


def test_gradcheck():
    gen = torch.Generator().manual_seed(2)
    args = (torch.randn(2, 3, 7, generator=gen, dtype=torch.float64),
            torch.randn(3, 4, generator=gen, dtype=torch.float64),
            torch.randn(3, generator=gen, dtype=torch.float64))
    args = tuple(a.requires_grad_() for a in args)
    assert gradcheck(lambda x, w, b: causal_conv1d(x, w, b, 'silu'), args)


def test_bad_inputs():
    x = torch.randn(2, 6, 11)
    with pytest.raises(ValueError, match='squeeze'):
        causal_conv1d(x, torch.randn(6, 1, 4))
    with pytest.raises(ValueError, match='activation'):
        causal_conv1d(x, torch.randn(6, 4), activation='relu')
    with pytest.raises(ValueError, match='bias'):
        causal_conv1d(x, torch.randn(6, 4), torch.randn(5))
