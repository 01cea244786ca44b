"""The Triton selective scan (``triton`` backend, mmvim/ops/
selective_scan_triton.py): contract, gradients, ``reverse``, half precision,
memory, whole backbones and the backend selection.

Without a GPU the real kernels run on CPU tensors under Triton's
interpreter (tests/triton_interpret.py), with one tile per shape
(``interpret_blocks``: 16..256 channels, up to 512 steps for units of up
to 64 channels, 128 for units of 256): the shapes below make partial channel
blocks, several channel blocks per unit, several time chunks and a partial
last chunk (``_several_chunks`` checks). With a GPU the same tests run
the compiled kernels.
"""
import triton_interpret  # noqa: I001  (sets TRITON_INTERPRET first)
from triton_interpret import DEVICE, require_triton

import pytest
import torch
from test_half_precision import scan_case
from test_selective_scan import (
    BC_KINDS,
    OPTIONS,
    make_inputs,
    reference_scan,
    saved_bytes,
)
from test_selective_scan_cpu import (
    _flipped_reference,
    backbone_outputs_and_grads,
)

from mmvim.ops import dispatch, selective_scan
from mmvim.ops.reference import selective_scan_loop

NAMES = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']

if triton_interpret.HAVE_TRITON:
    import triton
    import triton.language as tl

    from mmvim.ops.selective_scan_triton import (
        _adjoint_combine,
        _scan_combine,
        interpret_blocks,
    )

    @triton.jit
    def _scan_test_kernel(a_ptr, x_ptr, h_ptr, g_ptr, T: tl.constexpr):
        offs = tl.arange(0, 4)[:, None] * T + tl.arange(0, T)[None, :]
        a = tl.load(a_ptr + offs)
        x = tl.load(x_ptr + offs)
        _, h = tl.associative_scan((a, x), 1, _scan_combine)
        _, _, g = tl.associative_scan((a, a * 0.0 + 1.0, x), 1,
                                      _adjoint_combine, reverse=True)
        tl.store(h_ptr + offs, h)
        tl.store(g_ptr + offs, g)


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    require_triton()
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'triton')


def _several_chunks(per_unit: int, length: int) -> bool:
    """Whether the interpreter cuts L into several time chunks for units
    of ``per_unit`` channels (the tests that need it check their shape;
    on a GPU the autotuner picks the chunks: true by assumption)."""
    return DEVICE == 'cuda' or length > interpret_blocks(per_unit, length)[1]


def _on(x: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in x.items()}


def _optional(x, with_d=True, with_z=True, with_bias=True, softplus=True):
    # without softplus keep the steps delta + bias >= 0 (a negative step
    # grows the state exponentially; see test_selective_scan.py)
    bias = x['delta_bias'] if softplus else x['delta_bias'].abs()
    return dict(D=x['D'] if with_d else None, z=x['z'] if with_z else None,
                delta_bias=bias if with_bias else None,
                delta_softplus=softplus)


def _rel(a, b) -> float:
    """Largest difference relative to the reference's largest entry."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _grads_vs_float64(x, optional=True, reverse=None):
    """(names, ours, reference) of the outputs, last states and gradients
    of every input for the loss sum(out * w) + sum(last**2): ours through
    selective_scan (triton), the reference by autograd through the float64
    loop (on flipped inputs for ``reverse``). ``x``: make_inputs' dict;
    ``optional``: with D, z, delta_bias and softplus, else the bare scan."""
    names = NAMES if optional else NAMES[:5]
    leaves = {k: x[k].clone().requires_grad_() for k in names}
    ref_leaves = {k: v.detach().double().cpu().requires_grad_()
                  for k, v in leaves.items()}
    kw = dict(delta_softplus=optional, return_last_state=True)
    out, last = selective_scan(*leaves.values(), reverse=reverse, **kw)
    if reverse is None:
        ref_out, ref_last = selective_scan_loop(*ref_leaves.values(), **kw)
    else:
        args = [ref_leaves[k] for k in NAMES[:5]]
        opt = {k: ref_leaves.get(k) for k in NAMES[5:]}
        ref_out, ref_last = _flipped_reference(
            args, reverse, delta_softplus=optional, **opt)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9),
                    dtype=torch.float64)
    ((out.double() * w.to(out.device)).sum() + last.double().square()
     .sum()).backward()
    ((ref_out * w).sum() + ref_last.square().sum()).backward()
    ours = [out, last] + [leaves[k].grad for k in names]
    refs = [ref_out, ref_last] + [ref_leaves[k].grad for k in names]
    return ['out', 'last'] + list(names), ours, refs


# ------------------------------------------------------------ forward ---
@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
@pytest.mark.parametrize('with_d,with_z,with_bias,softplus', OPTIONS)
def test_forward_matches_float64_reference(b_kind, c_kind, with_d, with_z,
                                           with_bias, softplus):
    x = _on(make_inputs(2, 8, 3, 23, b_kind, c_kind))
    kw = _optional(x, with_d, with_z, with_bias, softplus)
    args = [x[k] for k in NAMES[:5]]
    out, last = selective_scan(*args, return_last_state=True, **kw)
    ref_out, ref_last = reference_scan(*[a.cpu() for a in args], **{
        k: v.cpu() if torch.is_tensor(v) else v for k, v in kw.items()})
    assert out.shape == (2, 8, 23) and out.dtype == torch.float32
    assert last.shape == (2, 8, 3) and last.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(last.double().cpu(), ref_last, rtol=1e-5,
                               atol=1e-5)
    single = selective_scan(*args, **kw)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, out)


@pytest.mark.parametrize('batch,dim,dstate,length,b_kind,c_kind', [
    (1, 300, 16, 150, 'var', 'var'),     # 256 + 44 channels, 2 chunks
    (2, 80, 4, 130, 'group2', 'const'),  # 40-channel units, partial block
    (2, 6, 1, 1, 'var', 'const'),        # L = 1, d_state 1
    (1, 10, 64, 70, 'group2', 'var'),    # d_state 64
    (2, 5, 5, 513, 'const', 'const'),    # odd dim and d_state, L = 512 + 1
])
def test_odd_shapes_match_float64_reference(batch, dim, dstate, length,
                                            b_kind, c_kind):
    x = _on(make_inputs(batch, dim, dstate, length, b_kind, c_kind,
                        seed=dstate))
    kw = _optional(x)
    args = [x[k] for k in NAMES[:5]]
    out, last = selective_scan(*args, return_last_state=True, **kw)
    ref_out, ref_last = selective_scan_loop(
        *[a.double().cpu() for a in args], return_last_state=True,
        **{k: v.double().cpu() if torch.is_tensor(v) else v
           for k, v in kw.items()})
    assert last.shape == (batch, dim, dstate)
    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(last.double().cpu(), ref_last, rtol=1e-5,
                               atol=1e-5)


def test_softplus_threshold_and_extreme_decays():
    """delta + bias above 20 passes through softplus unchanged (mamba-ssm's
    threshold); delta * |A| up to 1e4 underflows the decays to 0 without
    inf/NaN in outputs or gradients."""
    x = _on(make_inputs(1, 8, 8, 100, 'var', 'var', seed=5))
    delta = (torch.rand(1, 8, 100, generator=torch.Generator().manual_seed(
        1)) * 30 + 10).to(DEVICE)
    A = (-torch.logspace(-3, 2, 8).repeat(8, 1)).to(DEVICE)
    leaves = [t.clone().requires_grad_() for t in (x['u'], delta, A, x['B'],
                                                    x['C'])]
    out = selective_scan(*leaves, delta_softplus=True)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    v = delta.double().cpu()
    step = torch.where(v > 20, v, torch.log1p(torch.exp(v)))
    ref = selective_scan_loop(x['u'].double().cpu(), step, A.double().cpu(),
                              x['B'].double().cpu(), x['C'].double().cpu())
    assert _rel(out, ref) < 1e-5


# ---------------------------------------------------------- gradients ---
@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
def test_gradients_match_float64_autograd(b_kind, c_kind):
    """Every input's gradient and the last state's, through two chunks
    (L = 600), against autograd through the float64 loop."""
    assert _several_chunks(8, 600)
    x = _on(make_inputs(2, 8, 4, 600, b_kind, c_kind, seed=3))
    names, ours, refs = _grads_vs_float64(x)
    for name, a, b in zip(names, ours, refs):
        assert a.dtype == torch.float32
        assert _rel(a, b) < 1e-5, name


@pytest.mark.parametrize('dstate,dim,length', [(1, 600, 150), (16, 20, 90),
                                               (64, 6, 33)])
def test_gradients_without_optional_inputs(dstate, dim, length):
    """The bare recurrence (no D, z, bias, softplus) at d_state 1, 16, 64,
    with several and partial channel blocks (600 = 2 units of 256 + 44
    under the interpreter) and several chunks."""
    assert _several_chunks(300, 150)
    x = _on(make_inputs(1, dim, dstate, length, 'var', 'group2',
                        seed=dstate))
    names, ours, refs = _grads_vs_float64(
        dict(x, delta=x['delta'] + 0.05), optional=False)
    for name, a, b in zip(names, ours, refs):
        assert _rel(a, b) < 1e-5, name


def test_float64_is_computed_in_float64():
    """float64 inputs run the kernels in float64 (gradient references)."""
    x = _on(make_inputs(2, 8, 4, 70, 'var', 'group2', seed=6,
                        dtype=torch.float64))
    names, ours, refs = _grads_vs_float64(x)
    for name, a, b in zip(names, ours, refs):
        assert a.dtype == torch.float64
        assert _rel(a, b) < 1e-12, name


# ------------------------------------------------------------ reverse ---
@pytest.mark.parametrize('b_kind,c_kind,reverse', [
    ('var', 'var', (False, True)),
    ('group4', 'group4', (True, False, False, True)),
    ('const', 'var', (True,)),
    ('group2', 'const', (True, False, True, False)),
])
def test_reverse_matches_flipped_float64_reference(b_kind, c_kind, reverse):
    """reverse=...: the flagged channel blocks read and write their time
    axis from the end in the kernel; outputs, last states and gradients
    equal the reference on flipped inputs (two chunks, L = 600)."""
    assert _several_chunks(8, 600)
    x = _on(make_inputs(2, 8, 4, 600, b_kind, c_kind, seed=11))
    names, ours, refs = _grads_vs_float64(x, reverse=reverse)
    for name, a, b in zip(names, ours, refs):
        assert _rel(a, b) < 1e-5, name


def test_reverse_needs_flags_dividing_dim():
    x = _on(make_inputs(1, 6, 2, 10, 'var', 'var'))
    args = [x[n] for n in NAMES[:5]]
    with pytest.raises(ValueError, match='reverse needs R flags'):
        selective_scan(*args, reverse=(True,) * 4)
    torch.testing.assert_close(selective_scan(*args, reverse=(False, False)),
                               selective_scan(*args), rtol=0, atol=0)


# ---------------------------------------------------- half precision ---
# mamba-ssm's tolerances against the float64 oracle, for every B / C kind
# and option, are tests/test_half_precision.py's (its backends include
# triton). Here: that nothing but the inputs and outputs is 16-bit.
@pytest.mark.parametrize('itype', [torch.float16, torch.bfloat16])
def test_half_inputs_are_the_float32_call_rounded_once(itype):
    """16-bit u, delta, z and time-varying / grouped B, C with float32
    weights, over two chunks: the output and every gradient equal the
    float32 call on the same values (widened exactly), rounded once to
    each input's dtype (to nearest even); the last state and the weights'
    gradients are float32."""
    assert _several_chunks(4, 600)
    x, dout = scan_case(itype, 'var', 'group2', True, True, True,
                        length=600)
    x, dout = _on(x), dout.to(DEVICE)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    wide = {k: v.float().requires_grad_() for k, v in x.items()}
    kw = dict(delta_softplus=True, return_last_state=True)
    out, last = selective_scan(*[leaves[k] for k in NAMES], **kw)
    out32, last32 = selective_scan(*[wide[k] for k in NAMES], **kw)
    out.backward(dout)
    out32.backward(dout.float())
    assert out.dtype == itype and last.dtype == torch.float32
    assert torch.equal(out, out32.to(itype)) and torch.equal(last, last32)
    for name in NAMES:
        grad = leaves[name].grad
        assert grad.dtype == x[name].dtype, name
        assert torch.equal(grad, wide[name].grad.to(grad.dtype)), name


# ------------------------------------------------------------- memory ---
def test_memory_is_linear_in_length():
    """What the forward keeps for the backward grows with L (the inputs and
    one state per chunk), never with L * d_state."""
    small, large = saved_bytes(128, DEVICE), saved_bytes(512, DEVICE)
    assert large <= 4.2 * small
    x_bytes = 512 * 16 * 4  # one (1, 16, 512) float32 input
    assert large < 12 * x_bytes  # a (1, 16, 16, 512) history would be 16x


def test_backward_work_space_is_linear_in_length(monkeypatch):
    """The backward's buffers (gradients, partial sums over channel
    blocks of a time-varying B / C) are at most u's size for d_state 16:
    nothing of (batch, dim, N, L)."""
    x = _on(make_inputs(1, 128, 16, 200, 'var', 'var', seed=2))
    leaves = [x[k].requires_grad_() for k in NAMES[:5]]
    out = selective_scan(*leaves, delta_softplus=True)
    sizes = []
    empty = torch.empty

    def recording_empty(*shape, **kw):
        t = empty(*shape, **kw)
        sizes.append(t.numel())
        return t
    monkeypatch.setattr(torch, 'empty', recording_empty)
    out.sum().backward()
    monkeypatch.setattr(torch, 'empty', empty)
    assert sizes and max(sizes) <= x['u'].numel()
    assert all(t.grad is not None for t in leaves)


def test_inputs_are_not_written_and_strided_inputs_work():
    """Transposed / sliced inputs (as backbones pass them) give the same
    results and gradients, and the op never writes into its inputs."""
    x = _on(make_inputs(2, 8, 4, 40, 'var', 'group2', seed=6))
    dense = [x[n].clone().requires_grad_() for n in NAMES]
    strided = [x[n].transpose(-1, -2).contiguous().transpose(-1, -2)
               if x[n].dim() >= 3 else x[n].clone() for n in NAMES]
    strided = [t.detach().requires_grad_() for t in strided]
    before = [t.detach().clone() for t in strided]
    out_a = selective_scan(*dense, delta_softplus=True)
    out_b = selective_scan(*strided, delta_softplus=True)
    torch.testing.assert_close(out_a, out_b)
    w = torch.randn(out_a.shape, generator=torch.Generator().manual_seed(1))
    (out_a * w.to(DEVICE)).sum().backward()
    (out_b * w.to(DEVICE).transpose(-1, -2).contiguous().transpose(-1, -2)
     ).sum().backward()
    for a, b, orig in zip(dense, strided, before):
        torch.testing.assert_close(a.grad, b.grad)
        assert torch.equal(b.detach(), orig)


# ------------------------------------------------- whole backbones ---
@pytest.mark.parametrize('name', ['vim', 'vmamba', 'mambavision'])
def test_backbone_forward_backward_equals_torch_backend(monkeypatch, name):
    """Each backbone's tiny model, forward and backward, with the triton
    backend (scan and causal conv1d) equals the torch backend to 1e-5 of
    each tensor's scale."""
    results = backbone_outputs_and_grads(monkeypatch, name,
                                         ('triton', 'torch'), DEVICE)
    assert len(results['triton']) == len(results['torch'])
    for a, b in zip(results['triton'], results['torch']):
        assert _rel(a, b) < 1e-5


# ---------------------------------------------------------- selection ---
class _FakeCudaTensor:
    is_cuda = True
    device = torch.device('cuda', 0)


class _Kernel(dispatch.LazyKernel):
    """A kernel that imports (or not) without importing anything."""

    def __init__(self, ok: bool, name: str) -> None:
        super().__init__(f'fake_{name}', 'fn', f'install {name}')
        self._tried = True
        self._fn = (lambda *a, **k: None) if ok else None
        self._error = None if ok else f'ImportError: no {name}'


@pytest.mark.parametrize('cuda_ok,triton_ok,expected', [
    (True, True, 'cuda'), (False, True, 'triton'), (True, False, 'cuda'),
    (False, False, 'torch')])
def test_auto_on_cuda_tensors_prefers_cuda_then_triton(
        monkeypatch, cuda_ok, triton_ok, expected):
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'auto')
    monkeypatch.setitem(dispatch.KERNELS, 'fake_op', {
        'cuda': _Kernel(cuda_ok, 'cuda'), 'triton': _Kernel(triton_ok,
                                                             'triton')})
    if expected == 'torch':
        with pytest.warns(UserWarning, match='falling back.*install cuda.*'
                          'install triton'):
            got = dispatch.resolve_backend('fake_op', _FakeCudaTensor())
    else:
        got = dispatch.resolve_backend('fake_op', _FakeCudaTensor())
    assert got == expected
    # CPU tensors never pick triton by themselves
    assert dispatch.resolve_backend('fake_op', torch.zeros(1)) == 'torch'


def test_forcing_triton(monkeypatch):
    """MMVIM_SCAN_BACKEND=triton: CUDA tensors, or CPU tensors under the
    interpreter; otherwise one error that says what to do."""
    monkeypatch.setitem(dispatch.KERNELS, 'fake_op', {
        'triton': _Kernel(True, 'triton')})
    assert dispatch.resolve_backend('fake_op', _FakeCudaTensor()) == 'triton'
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert dispatch.resolve_backend('fake_op', torch.zeros(1)) == 'triton'
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        dispatch.resolve_backend('fake_op', torch.zeros(1))
    monkeypatch.setitem(dispatch.KERNELS, 'fake_op', {
        'triton': _Kernel(False, 'triton')})
    with pytest.raises(RuntimeError, match='cannot be used: ImportError.*'
                       'install triton'):
        dispatch.resolve_backend('fake_op', _FakeCudaTensor())


def test_reverse_runs_in_the_kernel():
    """The triton backend reads reversed blocks backwards itself (VMamba's
    reversed routes are then not flipped)."""
    from mmvim.ops import scan_reverses_in_kernel
    assert scan_reverses_in_kernel(torch.zeros(1, device=DEVICE))


# ------------------------------------------------------------ tuning ---
@pytest.mark.parametrize('autotune', [True, False])
def test_block_size_candidates_fit_every_shape(monkeypatch, autotune):
    """On a GPU the block sizes are autotuned: for every channel count
    (per unit) and every chunk length the backward may get, candidates of
    TILE_MIN..TILE_MAX channel x step elements with no more channels than
    the unit has (the narrowest block when it is narrower than that), and
    num_warps by tile; with MMVIM_TRITON_AUTOTUNE=0 exactly one."""
    import triton

    from mmvim.ops import selective_scan_triton as sst
    monkeypatch.setattr(sst, 'AUTOTUNE', autotune)
    fwd = [triton.Config(dict(BLOCK_D=d, BLOCK_L=t))
           for t in sst._BLOCK_L for d in sst._BLOCK_D]
    bwd = [triton.Config(dict(BLOCK_D=d)) for d in sst._BLOCK_D]
    narrow = min(sst._BLOCK_D)
    for per_unit in (1, 3, 24, 96, 192, 768):
        for block_l in (None,) + sst._BLOCK_L:
            kept = sst._prune(bwd if block_l else fwd, per_unit, block_l)
            assert len(kept) >= 1 and (autotune or len(kept) == 1)
            for c in kept:
                block_d = c.kwargs['BLOCK_D']
                tile = block_d * (block_l or c.kwargs['BLOCK_L'])
                assert block_d <= max(narrow,
                                      triton.next_power_of_2(per_unit))
                # 8 warps from 1024 elements (tools/triton_aot.py: the
                # default tiles spill with 4)
                assert c.num_warps == (4 if tile < 1024 else 8)
                if block_l is None or block_l * narrow <= sst.TILE_MAX:
                    assert tile <= sst.TILE_MAX
    if autotune:  # Vim-S (768 channels a direction): several to time
        assert len(sst._prune(fwd, 768, None)) >= 6
    else:  # the defaults tools/triton_aot.py compiles without spills
        (f,) = sst._prune(fwd, 768, None)
        (b,) = sst._prune(bwd, 768, f.kwargs['BLOCK_L'])
        assert (f.kwargs, f.num_warps) == (dict(BLOCK_D=32, BLOCK_L=64), 8)
        assert (b.kwargs, b.num_warps) == (dict(BLOCK_D=16), 8)


def test_scan_combines_give_the_sequential_recurrences():
    """The kernels' two combine functions under ``tl.associative_scan``
    (a tree on a GPU; under the interpreter the slice-wise doubling scan
    of mmvim.ops._triton_utils) are the sequential recurrences:
    h[t] = a[t] h[t-1] + x[t] forward, g[t] = b[t] + a[t+1] g[t+1] in
    reverse."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4, 64, generator=gen, dtype=torch.float64) + 0.2
    x = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    h, g = torch.empty_like(a), torch.empty_like(a)
    h_ref, g_ref = torch.empty_like(a), torch.empty_like(a)
    acc = torch.zeros(4, dtype=torch.float64)
    for t in range(64):
        acc = a[:, t] * acc + x[:, t]
        h_ref[:, t] = acc
    acc = torch.zeros(4, dtype=torch.float64)
    for t in reversed(range(64)):
        acc = x[:, t] + (a[:, t + 1] * acc if t < 63 else 0.0)
        g_ref[:, t] = acc
    dev = [t.to(DEVICE) for t in (a, x, h, g)]
    _scan_test_kernel[(1,)](*dev, T=64)
    torch.testing.assert_close(dev[2].cpu(), h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dev[3].cpu(), g_ref, rtol=1e-12, atol=1e-12)


def test_launches_that_a_gpu_cannot_take_fail_clearly():
    """What the interpreter would run but a GPU not: a batch above the
    65,535 blocks of grid axis z, and 32-bit offsets reaching 2^31 (a
    real tensor that large does not fit a test: the check itself)."""
    from mmvim.ops._triton_utils import GRID_YZ_MAX, check_launch
    batch = GRID_YZ_MAX + 1
    u = torch.randn(batch, 16, 1, device=DEVICE)
    A = -torch.rand(16, 2, device=DEVICE)
    with pytest.raises(ValueError, match='65536 batch exceed the 65535'):
        selective_scan(u, u, A, torch.randn(16, 2, device=DEVICE),
                       torch.randn(16, 2, device=DEVICE))
    check_launch('op', dict(batch=GRID_YZ_MAX), dict(time=2**31 - 1))
    with pytest.raises(ValueError, match=r'time offset reaches 2147483648'):
        check_launch('op', {}, dict(time=2**31))
    with pytest.raises(ValueError, match='MMVIM_SCAN_BACKEND=torch'):
        selective_scan(u[:1], u[:1], torch.zeros(16, 257, device=DEVICE),
                       torch.zeros(16, 257, device=DEVICE),
                       torch.zeros(16, 257, device=DEVICE))
