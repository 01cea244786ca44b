"""selective_scan: contract, numerics and gradients against an independent
float64 sequential reference (written here, element by element)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from mmvim.ops import selective_scan, selective_scan_torch
from mmvim.ops.reference import selective_scan_loop


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False):
    """Plain float64 loops over batch, channel, time: the S6 definition."""
    u, delta, A, B, C = (t.detach().double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    dstate = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.detach().double()[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))

    def row(mat, b, d, t):
        if mat.dim() == 2:
            return mat[d]
        if mat.dim() == 3:
            return mat[b, :, t]
        per_group = dim // mat.shape[1]
        return mat[b, d // per_group, :, t]

    y = torch.zeros(batch, dim, length, dtype=torch.float64)
    last = torch.zeros(batch, dim, dstate, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            h = torch.zeros(dstate, dtype=torch.float64)
            for t in range(length):
                dt = delta[b, d, t]
                h = torch.exp(dt * A[d]) * h + dt * u[b, d, t] * row(B, b, d, t)
                y[b, d, t] = (h * row(C, b, d, t)).sum()
            last[b, d] = h
    if D is not None:
        y = y + u * D.detach().double()[:, None]
    if z is not None:
        zz = z.detach().double()
        y = y * zz * torch.sigmoid(zz)
    return y, last


def make_bc(kind, batch, dim, dstate, length, gen, dtype=torch.float32):
    if kind == 'const':
        return torch.randn(dim, dstate, generator=gen, dtype=dtype)
    if kind == 'var':
        return torch.randn(batch, dstate, length, generator=gen, dtype=dtype)
    groups = int(kind[len('group'):])
    return torch.randn(batch, groups, dstate, length, generator=gen,
                       dtype=dtype)


def make_inputs(batch, dim, dstate, length, b_kind, c_kind, seed=0,
                dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, length, generator=gen, dtype=dtype),
        delta=torch.rand(batch, dim, length, generator=gen, dtype=dtype),
        A=-torch.rand(dim, dstate, generator=gen, dtype=dtype) * 2 - 0.1,
        B=make_bc(b_kind, batch, dim, dstate, length, gen, dtype),
        C=make_bc(c_kind, batch, dim, dstate, length, gen, dtype),
        D=torch.randn(dim, generator=gen, dtype=dtype),
        z=torch.randn(batch, dim, length, generator=gen, dtype=dtype),
        delta_bias=torch.randn(dim, generator=gen, dtype=dtype) * 0.5,
    )


BC_KINDS = [('const', 'const'), ('var', 'var'), ('group2', 'group2'),
            ('group4', 'group4'), ('var', 'group2'), ('const', 'var')]
# (with D, with z, with delta_bias, softplus)
OPTIONS = [(False, False, False, False), (True, True, True, True),
           (True, False, False, True), (False, True, True, False)]


@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
@pytest.mark.parametrize('with_d,with_z,with_bias,softplus', OPTIONS)
def test_forward_matches_float64_reference(b_kind, c_kind, with_d, with_z,
                                           with_bias, softplus):
    x = make_inputs(2, 8, 3, 23, b_kind, c_kind)
    # Without softplus keep the steps delta + bias >= 0: a negative step
    # makes the state grow (to 1e10 here) and an element-wise 1e-5
    # comparison would test the luck of float32 cancellations, not the scan.
    bias = x['delta_bias'] if softplus else x['delta_bias'].abs()
    kwargs = dict(D=x['D'] if with_d else None, z=x['z'] if with_z else None,
                  delta_bias=bias if with_bias else None,
                  delta_softplus=softplus)
    out, last = selective_scan(x['u'], x['delta'], x['A'], x['B'], x['C'],
                               return_last_state=True, **kwargs)
    ref_out, ref_last = reference_scan(x['u'], x['delta'], x['A'], x['B'],
                                       x['C'], **kwargs)
    assert out.shape == (2, 8, 23) and out.dtype == torch.float32
    assert last.shape == (2, 8, 3) and last.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.double(), ref_last, rtol=1e-5, atol=1e-5)
    # without return_last_state only the output comes back
    single = selective_scan(x['u'], x['delta'], x['A'], x['B'], x['C'],
                            **kwargs)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, out)


@pytest.mark.parametrize('length,chunk', [(1, 128), (7, 1), (7, 3), (64, 16),
                                          (65, 16), (200, 128)])
def test_chunking_is_invisible(length, chunk):
    """Chunk boundaries (incl. a final partial chunk) change nothing."""
    x = make_inputs(1, 4, 2, length, 'var', 'group2', seed=1)
    out, last = selective_scan_torch(x['u'], x['delta'], x['A'], x['B'],
                                     x['C'], x['D'], x['z'], x['delta_bias'],
                                     True, True, chunk=chunk)
    ref_out, ref_last = reference_scan(x['u'], x['delta'], x['A'], x['B'],
                                       x['C'], x['D'], x['z'],
                                       x['delta_bias'], True)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.double(), ref_last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('b_kind,c_kind', [('const', 'const'), ('var', 'var'),
                                           ('group2', 'group2'),
                                           ('var', 'group2')])
@pytest.mark.parametrize('return_last_state', [False, True])
def test_gradcheck_float64(b_kind, c_kind, return_last_state):
    x = make_inputs(2, 4, 2, 9, b_kind, c_kind, seed=2, dtype=torch.float64)
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    args = [x[n].clone().requires_grad_() for n in names]

    def fn(*a):
        return selective_scan_torch(*a, delta_softplus=True,
                                    return_last_state=return_last_state,
                                    chunk=4)

    assert gradcheck(fn, args, eps=1e-6, atol=1e-5)


def test_gradcheck_without_optional_inputs():
    """The bare recurrence (no D, z, bias, softplus) has its own backward."""
    x = make_inputs(2, 4, 2, 9, 'var', 'group2', seed=4, dtype=torch.float64)
    args = [x[n].clone().requires_grad_() for n in ('u', 'delta', 'A', 'B',
                                                     'C')]
    assert gradcheck(lambda *a: selective_scan_torch(*a, chunk=4), args,
                     eps=1e-6, atol=1e-5)


def test_softplus_threshold_matches_the_kernel():
    """Above 20 the kernel's softplus is the identity, with gradient 1."""
    x = make_inputs(1, 4, 2, 6, 'var', 'var', seed=5, dtype=torch.float64)
    delta = (x['delta'] + 25.0).requires_grad_()
    out = selective_scan_torch(x['u'], delta, x['A'] * 1e-3, x['B'], x['C'],
                               delta_softplus=True)
    ref = selective_scan_torch(x['u'], delta.detach() + 0.0, x['A'] * 1e-3,
                               x['B'], x['C'])
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    delta2 = delta.detach().clone().requires_grad_()
    selective_scan_torch(x['u'], delta2, x['A'] * 1e-3, x['B'],
                         x['C']).sum().backward()
    torch.testing.assert_close(delta.grad, delta2.grad)


def test_non_contiguous_inputs_and_inputs_untouched():
    """Transposed/sliced inputs (as backbones pass them) give the same result
    and gradients, and the op never writes into its inputs."""
    x = make_inputs(2, 8, 4, 40, 'var', 'group2', seed=6)
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    dense = [x[n].clone().requires_grad_() for n in names]
    # same values, stored (batch, L, dim) and (L, ...) and viewed back
    strided = [x[n].transpose(-1, -2).contiguous().transpose(-1, -2)
               if x[n].dim() >= 3 else x[n].clone() for n in names]
    strided = [t.detach().requires_grad_() for t in strided]
    before = [t.detach().clone() for t in strided]
    w = torch.randn(2, 8, 40, generator=torch.Generator().manual_seed(1))
    out_a = selective_scan_torch(*dense, delta_softplus=True, chunk=16)
    out_b = selective_scan_torch(*strided, delta_softplus=True, chunk=16)
    torch.testing.assert_close(out_a, out_b)
    (out_a * w).sum().backward()
    (out_b * w).sum().backward()
    for a, b, orig in zip(dense, strided, before):
        torch.testing.assert_close(a.grad, b.grad)
        assert torch.equal(b.detach(), orig)


def test_gradients_match_float64_autograd_reference():
    """Our hand-written backward in float32 vs autograd through float64."""
    x = make_inputs(2, 8, 4, 70, 'group2', 'group2', seed=3)
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    ours = [x[n].clone().requires_grad_() for n in names]
    ref = [x[n].double().requires_grad_() for n in names]
    w = torch.randn(2, 8, 70, generator=torch.Generator().manual_seed(9))
    out = selective_scan(*ours, delta_softplus=True)
    (out * w).sum().backward()
    out_ref = selective_scan_loop(*[t.double() for t in ref[:5]], *ref[5:],
                                  delta_softplus=True)
    (out_ref * w.double()).sum().backward()
    for name, a, b in zip(names, ours, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4,
                                   atol=1e-4, msg=f'grad of {name}')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_use_float32_state(dtype):
    x = make_inputs(2, 8, 4, 40, 'var', 'var', seed=4)
    half = {k: v.to(dtype) for k, v in x.items()}
    out, last = selective_scan(half['u'], half['delta'], half['A'],
                               half['B'], half['C'], half['D'], half['z'],
                               half['delta_bias'], True, True)
    assert out.dtype == dtype and last.dtype == torch.float32
    ref_out, _ = reference_scan(*(half[k].float() for k in
                                  ('u', 'delta', 'A', 'B', 'C')),
                                half['D'].float(), half['z'].float(),
                                half['delta_bias'].float(), True)
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    scale = ref_out.abs().max().item()
    assert (out.double() - ref_out).abs().max().item() <= tol * scale
    # gradients flow back in the input dtype
    leaf = half['u'].clone().requires_grad_()
    selective_scan(leaf, half['delta'], half['A'], half['B'], half['C'],
                   delta_softplus=True).float().sum().backward()
    assert leaf.grad.dtype == dtype and torch.isfinite(leaf.grad).all()


def test_extreme_decay_is_finite_and_exact():
    """Large delta*|A| over a long sequence: no inf/NaN, float32 round-off."""
    batch, dim, dstate, length = 1, 4, 8, 3000
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(batch, dim, length, generator=gen)
    delta = torch.rand(batch, dim, length, generator=gen) * 50 + 1
    A = -torch.logspace(-3, 2, dstate).repeat(dim, 1)   # |A| up to 100
    B = torch.randn(batch, dstate, length, generator=gen)
    C = torch.randn(batch, dstate, length, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    out, last = selective_scan(*leaves, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    out.sum().backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
    # exact against float64 (vectorised float64 loop = same math)
    ref = selective_scan_loop(*(t.double() for t in (u, delta, A, B, C)))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


def saved_bytes(length, device='cpu'):
    """Bytes :func:`selective_scan` keeps for its backward on a
    (1, 16, length) input with d_state 16 and time-varying B / C."""
    x = make_inputs(1, 16, 16, length, 'var', 'var')
    leaves = [x[k].to(device).requires_grad_() for k in ('u', 'delta', 'A',
                                                         'B', 'C')]
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(*leaves)
    return total


def test_memory_is_linear_in_length():
    """Saved-for-backward memory grows with L, not with L*N or L^2."""
    small, large = saved_bytes(512), saved_bytes(2048)
    assert large <= 4.2 * small
    # nothing of size L * dim * N is saved: it would be 16x the inputs
    x_bytes = 2048 * 16 * 4
    assert large < 30 * x_bytes


def test_bad_inputs_give_clear_errors():
    x = make_inputs(2, 8, 3, 10, 'var', 'var')
    with pytest.raises(ValueError, match='delta shape'):
        selective_scan(x['u'], x['delta'][..., :5], x['A'], x['B'], x['C'])
    with pytest.raises(ValueError, match=r'A must be \(dim=8, N\)'):
        selective_scan(x['u'], x['delta'], x['A'][:4], x['B'], x['C'])
    with pytest.raises(ValueError, match='B has shape'):
        selective_scan(x['u'], x['delta'], x['A'], x['B'][:, :2], x['C'])
    with pytest.raises(ValueError, match='G dividing'):
        selective_scan(x['u'], x['delta'], x['A'],
                       torch.randn(2, 3, 3, 10), x['C'])
    with pytest.raises(NotImplementedError, match='complex'):
        selective_scan(x['u'], x['delta'], x['A'].to(torch.cfloat), x['B'],
                       x['C'])


def test_backend_env_is_validated(monkeypatch):
    x = make_inputs(1, 4, 2, 5, 'var', 'var')
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'tpu')
    with pytest.raises(ValueError, match='not a valid backend'):
        selective_scan(x['u'], x['delta'], x['A'], x['B'], x['C'])
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'cuda')
    with pytest.raises(RuntimeError, match='needs CUDA tensors'):
        selective_scan(x['u'], x['delta'], x['A'], x['B'], x['C'])
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'torch')
    out = selective_scan(x['u'], x['delta'], x['A'], x['B'], x['C'])
    assert out.shape == (1, 4, 5)


def test_loop_reference_matches_independent_reference():
    """The benchmark baseline computes the same function."""
    for b_kind, c_kind in BC_KINDS:
        x = make_inputs(2, 8, 3, 12, b_kind, c_kind, seed=6)
        args = [x[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z',
                               'delta_bias')]
        out, last = selective_scan_loop(*args, delta_softplus=True,
                                        return_last_state=True)
        ref_out, ref_last = reference_scan(*args, delta_softplus=True)
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(last.double(), ref_last, rtol=1e-5,
                                   atol=1e-5)


# ---------------------------------------------------------------- CUDA ---
def _cuda_kernel_or_skip():
    if not torch.cuda.is_available():
        pytest.skip('needs a CUDA device')
    from mmvim.ops import cuda_kernel_status
    reason = cuda_kernel_status()['selective_scan']
    if reason is not None:
        pytest.skip(f'mamba-ssm kernel unavailable: {reason}')


@pytest.mark.gpu
@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_kernel_matches_torch_backend(b_kind, c_kind, dtype,
                                           monkeypatch):
    _cuda_kernel_or_skip()
    x = make_inputs(2, 64, 16, 300, b_kind, c_kind, seed=7)
    x = {k: v.cuda() for k, v in x.items()}
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    results = {}
    for backend in ('cuda', 'torch'):
        monkeypatch.setenv('MMVIM_SCAN_BACKEND', backend)
        leaves = [x[n].to(dtype if n in ('u', 'delta', 'B', 'C', 'z')
                          else torch.float32).clone().requires_grad_()
                  for n in names]
        out, last = selective_scan(*leaves, delta_softplus=True,
                                   return_last_state=True)
        out.float().square().sum().backward()
        results[backend] = [out.float(), last] + [t.grad.float()
                                                 for t in leaves]
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    for a, b in zip(results['cuda'], results['torch']):
        scale = b.abs().max().clamp_min(1.0)
        assert ((a - b).abs().max() / scale).item() < tol


@pytest.mark.gpu
def test_auto_backend_uses_kernel_on_cuda(monkeypatch):
    _cuda_kernel_or_skip()
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'auto')
    from mmvim.ops.dispatch import resolve_backend
    x = torch.zeros(1, device='cuda')
    assert resolve_backend('selective_scan', x) == 'cuda'


def test_cuda_tensor_falls_back_with_one_warning(monkeypatch):
    """Without the kernel, a CUDA tensor takes the torch path and says why."""
    import warnings

    from mmvim.ops import dispatch

    class FakeCudaTensor:
        is_cuda = True
        device = torch.device('cuda', 0)

    monkeypatch.setitem(dispatch.KERNELS, 'fallback_test_op', {})
    dispatch.register_kernel('fallback_test_op', 'cuda', dispatch.LazyKernel(
        'mmvim_no_such_kernel_pkg', 'fn', 'install it'))
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'auto')
    with pytest.warns(UserWarning, match='falling back.*install it'):
        assert dispatch.resolve_backend('fallback_test_op',
                                        FakeCudaTensor()) == 'torch'
    with warnings.catch_warnings():  # once per process, not per call
        warnings.simplefilter('error')
        assert dispatch.resolve_backend('fallback_test_op',
                                        FakeCudaTensor()) == 'torch'
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'cuda')
    with pytest.raises(RuntimeError,
                       match="cannot be used: ModuleNotFoundError"):
        dispatch.resolve_backend('fallback_test_op', FakeCudaTensor())
    # a CPU tensor with the cuda backend forced is an error naming the device
    with pytest.raises(RuntimeError, match='got tensors on cpu'):
        dispatch.resolve_backend('fallback_test_op', torch.zeros(1))
    # an op without a kernel of the forced kind takes its torch path
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'cpu')
    assert dispatch.resolve_backend('fallback_test_op',
                                    torch.zeros(1)) == 'torch'


def test_softplus_matches_kernel_threshold():
    """delta + bias above 20 passes through unchanged (kernel behaviour)."""
    x = make_inputs(1, 2, 1, 4, 'const', 'const')
    delta = torch.full((1, 2, 4), 25.0)
    out = selective_scan(x['u'], delta, torch.zeros(2, 1),
                         torch.ones(2, 1), torch.ones(2, 1),
                         delta_softplus=True)
    # A = 0, B = C = 1: y[t] = sum_{s<=t} delta * u[s]
    expected = torch.cumsum(25.0 * x['u'], dim=-1)
    torch.testing.assert_close(out, expected)
    assert math.isclose(F.softplus(torch.tensor(25.0)).item(), 25.0)


def test_shape_grid_exhaustive_small():
    """Every B/C layout combination at a few odd sizes."""
    kinds = ['const', 'var', 'group2']
    for (b_kind, c_kind), (length, dstate) in itertools.product(
            itertools.product(kinds, kinds), [(1, 1), (5, 2), (17, 5)]):
        x = make_inputs(1, 4, dstate, length, b_kind, c_kind, seed=8)
        out = selective_scan(x['u'], x['delta'], x['A'], x['B'], x['C'],
                             x['D'])
        ref, _ = reference_scan(x['u'], x['delta'], x['A'], x['B'], x['C'],
                                x['D'])
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5,
                                   msg=f'{b_kind}/{c_kind} L={length}')
