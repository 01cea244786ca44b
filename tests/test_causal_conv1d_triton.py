"""The Triton causal depthwise conv1d (``triton`` backend, mmvim/ops/
causal_conv1d_triton.py), forward and backward, on a CUDA device or under
Triton's interpreter (tests/triton_interpret.py)."""
# first: sets TRITON_INTERPRET on machines without CUDA
from triton_interpret import DEVICE, require_triton  # noqa: I001

import pytest
import torch
import torch.nn.functional as F

from mmvim.ops import causal_conv1d, causal_conv1d_torch


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    require_triton()
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'triton')


def _case(batch, dim, length, width, with_bias, itype=torch.float32,
          wtype=torch.float32, seed=0, channel_last=False):
    gen = torch.Generator().manual_seed(seed)
    if channel_last:  # (batch, L, dim) storage, viewed as (batch, dim, L)
        x = torch.randn(batch, length, dim, generator=gen).transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, generator=gen)
    weight = torch.randn(dim, width, generator=gen).to(wtype)
    bias = torch.randn(dim, generator=gen).to(wtype) if with_bias else None
    return (x.to(DEVICE, itype), weight.to(DEVICE),
            None if bias is None else bias.to(DEVICE))


def _reference(x, weight, bias, activation):
    """out[t] = bias + sum_k w[k] x[t - (width-1) + k] (zero left padding),
    written as shifted products (float64 autograd through F.conv1d's CPU
    depthwise backward takes seconds)."""
    width, length = weight.shape[1], x.shape[2]
    padded = F.pad(x, (width - 1, 0))
    out = sum(weight[:, k, None] * padded[..., k:k + length]
              for k in range(width))
    if bias is not None:
        out = out + bias[:, None]
    return F.silu(out) if activation is not None else out


def test_reference_is_the_torch_path():
    x, weight, bias = _case(2, 6, 11, 3, True, itype=torch.float64,
                            wtype=torch.float64)
    x, weight, bias = x.cpu(), weight.cpu(), bias.cpu()
    torch.testing.assert_close(_reference(x, weight, bias, 'silu'),
                               causal_conv1d_torch(x, weight, bias, 'silu'))


def _run(x, weight, bias, activation, seed=1, grad_dtype=None):
    """Outputs and gradients of ours (triton) and of float64 autograd
    through the reference, for the loss sum(out * g) (g rounded to
    ``grad_dtype``, default the output's dtype)."""
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)
              if t is not None]
    refs = [t.detach().double().cpu().requires_grad_() for t in leaves]
    b, rb = (leaves[2], refs[2]) if bias is not None else (None, None)
    out = causal_conv1d(leaves[0], leaves[1], b, activation)
    ref = _reference(refs[0], refs[1], rb, activation)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    g = g.to(grad_dtype or out.dtype)
    out.backward(g.to(DEVICE, out.dtype))
    ref.backward(g.double())
    return [out] + [t.grad for t in leaves], [ref] + [t.grad for t in refs]


@pytest.mark.parametrize('width', [2, 3, 4])
@pytest.mark.parametrize('with_bias', [True, False])
@pytest.mark.parametrize('activation', [None, 'silu'])
def test_matches_float64_reference(width, with_bias, activation):
    """Forward and every gradient, fp32; dim 300 (with the interpreter's
    blocks of 256 channels: a full and a partial block), L 150 (64 + 64 +
    22 steps)."""
    x, weight, bias = _case(2, 300, 150, width, with_bias)
    ours, refs = _run(x, weight, bias, activation)
    assert ours[0].shape == x.shape and ours[0].dtype == torch.float32
    for a, b in zip(ours, refs):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize('itype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('width', [2, 4])
def test_half_x_with_float32_weight(itype, width):
    """AMP's call: 16-bit x, float32 weight and bias. Computed in float32,
    the output in x's dtype, each gradient in its input's dtype, within
    causal-conv1d's own test tolerances of float64 on the same rounded
    inputs (weights at (1e-3, 1e-3) relative to their scale, as the sums
    over batch and time grow)."""
    x, weight, bias = _case(2, 40, 130, width, True, itype=itype)
    ours, refs = _run(x, weight, bias, 'silu')
    rtol, atol = (3e-3, 5e-3) if itype == torch.float16 else (1e-2, 5e-2)
    assert ours[0].dtype == itype and ours[1].dtype == itype
    assert ours[2].dtype == torch.float32 and ours[3].dtype == torch.float32
    for a, b in zip(ours[:2], refs[:2]):
        torch.testing.assert_close(a.double().cpu(), b, rtol=rtol, atol=atol)
    for a, b in zip(ours[2:], refs[2:]):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-3,
                                   atol=1e-3 * scale)
    # only the output and dx are rounded: the float32 call on the same
    # values, rounded once (to nearest even), is bitwise the same
    wide, _ = _run(x.float(), weight, bias, 'silu', grad_dtype=itype)
    for a, b in zip(ours, wide):
        assert torch.equal(a, b.to(a.dtype))


def test_float64_and_channel_last_inputs():
    """float64 runs in float64; a channel-last view (stride 1 along
    channels, as a slice of a Linear output) needs no copy."""
    x, weight, bias = _case(1, 24, 70, 4, True, itype=torch.float64,
                            wtype=torch.float64, channel_last=True)
    assert x.stride(1) == 1
    ours, refs = _run(x, weight, bias, 'silu')
    for a, b in zip(ours, refs):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)


def test_short_sequences_and_many_time_splits():
    """L shorter than the width, and a backward split along time into
    several parts (a long sequence over few channels)."""
    from mmvim.ops import causal_conv1d_triton as cct
    assert cct._splits(1, 4, 700) > 1
    for length in (1, 3, 700):
        x, weight, bias = _case(1, 4, length, 4, True, seed=length)
        ours, refs = _run(x, weight, bias, 'silu')
        for a, b in zip(ours, refs):
            torch.testing.assert_close(a.double().cpu(), b, rtol=1e-5,
                                       atol=1e-5)


def test_width_outside_2_to_4_is_refused():
    x, weight, _ = _case(1, 4, 10, 4, False)
    with pytest.raises(ValueError, match='width must be 2 to 4'):
        causal_conv1d(x, torch.randn(4, 5, device=DEVICE))


def test_batch_above_the_grid_limit_fails_clearly():
    """Grid axis z (the batch) takes at most 65,535 blocks on a GPU; the
    interpreter has no limit, so the wrapper checks it."""
    from mmvim.ops._triton_utils import GRID_YZ_MAX
    x = torch.randn(GRID_YZ_MAX + 1, 4, 1, device=DEVICE)
    with pytest.raises(ValueError, match='batch exceed the 65535'):
        causal_conv1d(x, torch.randn(4, 4, device=DEVICE))
