"""The compiled CPU selective scan (``cpu`` backend, ``mmvim._ext``).

The extension is built by the install step (setup.py), so these tests FAIL
when it is missing: a silently skipped kernel would let CI pass while every
user runs the slow path. Set ``MMVIM_NO_EXT=1`` (the same switch that makes
setup.py skip the build) to run the suite without it; then they skip.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_selective_scan import BC_KINDS, make_inputs, reference_scan
from torch.autograd import gradcheck

from mmvim.ops import selective_scan
from mmvim.ops.dispatch import kernel, resolve_backend
from mmvim.ops.reference import selective_scan_loop

NAMES = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']


def _load_ext():
    try:
        import mmvim._ext as ext
        from mmvim.ops.selective_scan_cpu import selective_scan_cpu
    except ImportError as exc:
        if os.environ.get('MMVIM_NO_EXT') == '1':
            pytest.skip('MMVIM_NO_EXT=1: the C++ extension was not built')
        pytest.fail(f'mmvim._ext does not import ({exc}); the install step '
                    'builds it (make install, or python setup.py build_ext '
                    '--inplace). Set MMVIM_NO_EXT=1 if it is meant to be '
                    'absent.')
    return ext, selective_scan_cpu


@pytest.fixture(scope='module')
def ext():
    return _load_ext()[0]


@pytest.fixture(scope='module')
def scan_cpu():
    return _load_ext()[1]


def _supported_isas():
    try:
        from mmvim.ops.selective_scan_cpu import supported_isas
    except ImportError:
        return []
    return supported_isas()


#: every instruction set the extension is compiled for; the tests of the
#: ones this CPU cannot run are reported as skipped, so the test output
#: says which paths ran (MMVIM_CPU_ISA forces the one used elsewhere)
ALL_ISAS = ('avx512', 'avx2', 'generic')
ISAS = _supported_isas()


@pytest.fixture(params=ALL_ISAS)
def isa(request, ext):
    """Every instruction set the build holds, on this CPU if it runs it."""
    if request.param not in ISAS:
        pytest.skip(f'this CPU cannot run the {request.param} kernels '
                    f'(it runs {", ".join(ISAS)})')
    before = ext.isa()
    ext.set_isa(request.param)
    yield request.param
    ext.set_isa(before)


@pytest.fixture
def cpu_backend(monkeypatch, ext):
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'cpu')


def _optional(x, with_d, with_z, with_bias, softplus):
    # without softplus a negative step makes the state grow exponentially
    # and overflow float32 over a long sequence: keep delta + bias >= 0
    bias = x['delta_bias'] if softplus else x['delta_bias'].abs()
    return dict(D=x['D'] if with_d else None, z=x['z'] if with_z else None,
                delta_bias=bias if with_bias else None,
                delta_softplus=softplus)


def _float64_loop(*args, **kw):
    args = [a.double() for a in args]
    kw = {k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()}
    return selective_scan_loop(*args, return_last_state=True, **kw)


# ------------------------------------------------------------ forward ---
@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
@pytest.mark.parametrize('with_d,with_z,with_bias,softplus', [
    (False, False, False, False), (True, True, True, True),
    (True, False, False, True), (False, True, True, False)])
def test_forward_matches_float64_reference(isa, cpu_backend, b_kind, c_kind,
                                           with_d, with_z, with_bias,
                                           softplus):
    # dim 40 with 2/4 groups: full and zero-padded channel blocks;
    # L = 150: two full chunks of 64 steps and a partial one. The reference
    # is the project's loop (mmvim.ops.reference) in float64, itself checked
    # against the element-wise definition in test_selective_scan.py.
    for dstate in (1, 3, 16):
        x = make_inputs(2, 40, dstate, 150, b_kind, c_kind, seed=dstate)
        kw = _optional(x, with_d, with_z, with_bias, softplus)
        args = [x[k] for k in NAMES[:5]]
        out, last = selective_scan(*args, return_last_state=True, **kw)
        ref_out, ref_last = _float64_loop(*args, **kw)
        assert out.dtype == torch.float32 and last.dtype == torch.float32
        assert last.shape == (2, 40, dstate)
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(last.double(), ref_last, rtol=1e-5,
                                   atol=1e-5)
        single = selective_scan(*args, **kw)
        assert isinstance(single, torch.Tensor)
        torch.testing.assert_close(single, out, rtol=0, atol=0)


@pytest.mark.parametrize('batch,dim,dstate,length', [
    (1, 1, 1, 1), (1, 3, 2, 5), (3, 17, 8, 64), (1, 16, 16, 65),
    (2, 48, 4, 129), (1, 32, 24, 300)])
def test_odd_shapes_match_float64_reference(cpu_backend, batch, dim, dstate,
                                            length):
    """Lengths around the chunk size, dims that are not a whole number of
    SIMD blocks, and d_state values without a specialised kernel."""
    x = make_inputs(batch, dim, dstate, length, 'var', 'var', seed=length)
    args = [x[k] for k in NAMES]
    out, last = selective_scan(*args, delta_softplus=True,
                               return_last_state=True)
    if batch * dim * length <= 2000:  # the element-wise definition
        ref_out, ref_last = reference_scan(*args, delta_softplus=True)
    else:
        ref_out, ref_last = _float64_loop(*args, delta_softplus=True)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.double(), ref_last, rtol=1e-5,
                               atol=1e-5)


def test_float64_is_computed_in_float64(cpu_backend):
    x = make_inputs(2, 8, 4, 70, 'group2', 'group2', seed=1,
                    dtype=torch.float64)
    args = [x[k] for k in NAMES]
    out, last = selective_scan(*args, delta_softplus=True,
                               return_last_state=True)
    ref_out, ref_last = reference_scan(*args, delta_softplus=True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, ref_last, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------- backward ---
@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
@pytest.mark.parametrize('options', ['all', 'none', 'd_only', 'z_bias'])
def test_gradcheck_float64(scan_cpu, b_kind, c_kind, options):
    """The adjoint backward against finite differences, for every B/C
    layout, with and without each optional input; the last state gets a
    gradient too. L = 70 crosses a chunk boundary."""
    x = make_inputs(2, 4, 2, 70, b_kind, c_kind, seed=2, dtype=torch.float64)
    with_d = options in ('all', 'd_only')
    with_z = options in ('all', 'z_bias')
    with_bias = options in ('all', 'z_bias')
    softplus = options != 'none'
    names = NAMES[:5] + [n for n, on in (('D', with_d), ('z', with_z),
                                         ('delta_bias', with_bias)) if on]
    leaves = [x[n].clone().requires_grad_() for n in names]

    def fn(*a):
        kw = dict(zip(names[5:], a[5:]))
        return scan_cpu(*a[:5], delta_softplus=softplus,
                        return_last_state=True, **kw)

    assert gradcheck(fn, leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('dstate', [1, 5, 8, 16])
@pytest.mark.parametrize('b_kind,c_kind', [('var', 'var'),
                                           ('group4', 'group4'),
                                           ('const', 'var'),
                                           ('var', 'group2')])
def test_float32_gradients_match_float64_autograd(isa, cpu_backend, dstate,
                                                  b_kind, c_kind):
    """float32 gradients (the kernels specialised on d_state 1/8/16 and the
    general one) against autograd through the float64 reference loop."""
    x = make_inputs(2, 40, dstate, 140, b_kind, c_kind, seed=3)
    ours = [x[n].clone().requires_grad_() for n in NAMES]
    ref = [x[n].double().requires_grad_() for n in NAMES]
    w = torch.randn(2, 40, 140, generator=torch.Generator().manual_seed(9))
    out, last = selective_scan(*ours, delta_softplus=True,
                               return_last_state=True)
    ((out * w).sum() + last.square().sum()).backward()
    out_ref, last_ref = selective_scan_loop(*ref, delta_softplus=True,
                                            return_last_state=True)
    ((out_ref * w.double()).sum() + last_ref.square().sum()).backward()
    for name, a, b in zip(NAMES, ours, ref):
        scale = b.grad.abs().max().clamp_min(1.0)
        err = ((a.grad.double() - b.grad).abs().max() / scale).item()
        assert err < 1e-5, f'grad of {name}: relative error {err:.2e}'


# ------------------------------------------- channel blocks reversed ---
REVERSE = [(False, True), (True, False, False, True), (True,)]


def _flipped_reference(args, reverse, **kw):
    """The float64 loop on explicitly flipped inputs: channel block r of
    the output is flip(S6(flip(inputs))) when reverse[r] (B/C expanded to
    one row per channel so that each channel gets its own flip)."""
    u = args[0]
    dim = u.shape[1]
    mask = torch.tensor(reverse).repeat_interleave(dim // len(reverse))

    def seq(t):
        if t is None:
            return None
        return torch.where(mask[None, :, None], t.flip(-1), t)

    def bc(m):
        if m.dim() == 2:
            return m
        m = m.unsqueeze(1) if m.dim() == 3 else m
        m = m.repeat_interleave(dim // m.shape[1], 1)
        return torch.where(mask[None, :, None, None], m.flip(-1), m)
    kw = dict(kw, z=seq(kw.get('z')))
    out, last = _float64_loop(seq(u), seq(args[1]), args[2], bc(args[3]),
                              bc(args[4]), **kw)
    return seq(out), last


@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
@pytest.mark.parametrize('reverse', REVERSE)
def test_reverse_matches_flipped_float64_reference(isa, cpu_backend, b_kind,
                                                   c_kind, reverse):
    """reverse=...: the flagged channel blocks read and write their time
    axis from the end in the kernel (d_state 1 and 16, partial blocks, a
    partial last chunk), exactly as the reference on flipped inputs."""
    for dstate in (1, 16):
        x = make_inputs(2, 40, dstate, 150, b_kind, c_kind, seed=dstate)
        kw = _optional(x, True, True, True, True)
        args = [x[k] for k in NAMES[:5]]
        out, last = selective_scan(*args, return_last_state=True,
                                   reverse=reverse, **kw)
        ref_out, ref_last = _flipped_reference(args, reverse, **kw)
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(last.double(), ref_last, rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize('b_kind,c_kind', BC_KINDS)
def test_reverse_gradcheck_float64(scan_cpu, b_kind, c_kind):
    """The adjoint of the reversed blocks (every input, the last state)."""
    x = make_inputs(2, 4, 2, 70, b_kind, c_kind, seed=2, dtype=torch.float64)
    leaves = [x[n].clone().requires_grad_() for n in NAMES]
    assert gradcheck(
        lambda *a: scan_cpu(*a, delta_softplus=True, return_last_state=True,
                            reverse=(False, True)),
        leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('reverse', REVERSE)
def test_reverse_equals_the_torch_backend_flips(ext, monkeypatch, reverse):
    """The torch backend (and the cuda one, tests/test_cuda_glue_contract)
    emulate reverse with explicit flips: same outputs and gradients."""
    x = make_inputs(2, 40, 4, 90, 'var', 'group4', seed=12)
    w = torch.randn(2, 40, 90, generator=torch.Generator().manual_seed(4))
    results = {}
    for backend in ('cpu', 'torch'):
        monkeypatch.setenv('MMVIM_SCAN_BACKEND', backend)
        leaves = [x[n].clone().requires_grad_() for n in NAMES]
        out, last = selective_scan(*leaves, delta_softplus=True,
                                   return_last_state=True, reverse=reverse)
        ((out * w).sum() + last.square().sum()).backward()
        results[backend] = [out, last] + [t.grad for t in leaves]
    for a, b in zip(results['cpu'], results['torch']):
        scale = b.abs().max().clamp_min(1.0)
        assert ((a - b).abs().max() / scale).item() < 1e-5


def test_reverse_needs_flags_dividing_dim(cpu_backend):
    x = make_inputs(1, 6, 2, 10, 'var', 'var')
    args = [x[n] for n in NAMES[:5]]
    with pytest.raises(ValueError, match='reverse needs R flags'):
        selective_scan(*args, reverse=(True,) * 4)
    # no flag set: the plain scan
    torch.testing.assert_close(selective_scan(*args, reverse=(False, False)),
                               selective_scan(*args), rtol=0, atol=0)


# ---------------------------------------------------------- numerics ---
def test_extreme_decays_are_finite_and_exact(isa, cpu_backend):
    """delta * |A| up to 1e4: decays underflow to exactly 0, no inf/NaN in
    outputs or gradients, still float32-exact against float64."""
    batch, dim, dstate, length = 1, 16, 8, 300
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(batch, dim, length, generator=gen)
    delta = torch.rand(batch, dim, length, generator=gen) * 100
    A = -torch.logspace(-3, 2, dstate).repeat(dim, 1)  # delta|A| <= 1e4
    B = torch.randn(batch, dstate, length, generator=gen)
    C = torch.randn(batch, dstate, length, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    out, last = selective_scan(*leaves, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    (out.sum() + last.sum()).backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
    ref = selective_scan_loop(*(t.double() for t in (u, delta, A, B, C)))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    # with softplus, huge raw steps (above the threshold of 20) too
    out = selective_scan(u, delta * 100, A, B, C, delta_softplus=True)
    assert torch.isfinite(out).all()


def test_softplus_threshold_as_the_kernel(cpu_backend):
    """Above 20 softplus is the identity (value and gradient)."""
    x = make_inputs(1, 4, 2, 6, 'var', 'var', seed=5)
    delta = (x['delta'] + 25.0).requires_grad_()
    out = selective_scan(x['u'], delta, x['A'] * 1e-3, x['B'], x['C'],
                         delta_softplus=True)
    delta2 = delta.detach().clone().requires_grad_()
    ref = selective_scan(x['u'], delta2, x['A'] * 1e-3, x['B'], x['C'])
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(delta.grad, delta2.grad)


def test_non_contiguous_inputs_and_inputs_untouched(cpu_backend):
    x = make_inputs(2, 40, 4, 90, 'var', 'group2', seed=6)
    dense = [x[n].clone().requires_grad_() for n in NAMES]
    # the same values stored transposed and viewed back, plus a slice
    strided = [x[n].transpose(-1, -2).contiguous().transpose(-1, -2)
               if x[n].dim() >= 3 else x[n].clone() for n in NAMES]
    strided = [t.detach().requires_grad_() for t in strided]
    before = [t.detach().clone() for t in strided]
    w = torch.randn(2, 40, 90, generator=torch.Generator().manual_seed(1))
    out_a = selective_scan(*dense, delta_softplus=True)
    out_b = selective_scan(*strided, delta_softplus=True)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    (out_a * w).sum().backward()
    (out_b * w).sum().backward()
    for a, b, orig in zip(dense, strided, before):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
        assert torch.equal(b.detach(), orig)
    # a channel slice of a bigger tensor (as Vim's split of x_proj)
    big = torch.randn(2, 80, 90, generator=torch.Generator().manual_seed(2))
    sliced = selective_scan(big[:, 20:60], x['delta'], x['A'], x['B'],
                            x['C'])
    copied = selective_scan(big[:, 20:60].contiguous(), x['delta'], x['A'],
                            x['B'], x['C'])
    torch.testing.assert_close(sliced, copied, rtol=0, atol=0)


def test_one_and_two_threads_agree_bitwise(cpu_backend):
    """Items are computed whole by one thread and partial gradients are
    reduced in a fixed order, so the thread count changes nothing."""
    x = make_inputs(3, 64, 16, 200, 'group2', 'group2', seed=7)
    w = torch.randn(3, 64, 200, generator=torch.Generator().manual_seed(3))

    def run():
        leaves = [x[n].clone().requires_grad_() for n in NAMES]
        out, last = selective_scan(*leaves, delta_softplus=True,
                                   return_last_state=True)
        ((out * w).sum() + last.sum()).backward()
        return [out, last] + [t.grad for t in leaves]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_instruction_sets_agree(ext, cpu_backend):
    """Each kernel build (AVX-512, AVX2, baseline) gives the same function
    to float32 round-off; the one picked at import is the widest."""
    x = make_inputs(2, 40, 16, 130, 'group2', 'var', seed=8)
    args = [x[n] for n in NAMES]
    results = {}
    before = ext.isa()
    for isa in ISAS:
        ext.set_isa(isa)
        results[isa] = selective_scan(*args, delta_softplus=True)
    ext.set_isa('auto')
    assert ext.isa() == ISAS[0]
    ext.set_isa(before)
    for out in results.values():
        torch.testing.assert_close(out, results[ISAS[0]], rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(RuntimeError, match='unknown instruction set'):
        ext.set_isa('sse9')


def test_cpu_isa_environment_variable_forces_the_instruction_set():
    """MMVIM_CPU_ISA picks the kernels for a whole process (the suite can
    run on the baseline path of any machine); a name the build does not
    have stops the cpu backend with the reason and the choices."""
    code = textwrap.dedent("""
        import torch
        from mmvim.ops import selective_scan
        import mmvim._ext as ext
        x = torch.randn(1, 8, 5)
        selective_scan(x, x.abs(), -torch.ones(8, 2), torch.randn(8, 2),
                       torch.randn(8, 2))
        print(ext.isa())
    """)
    env = dict(os.environ, MMVIM_SCAN_BACKEND='cpu', MMVIM_CPU_ISA='generic')
    res = subprocess.run([sys.executable, '-c', code], env=env,
                         capture_output=True, text=True, timeout=300)
    if 'mmvim._ext' in res.stderr and 'No module' in res.stderr:
        pytest.skip('mmvim._ext is not built')
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == 'generic'
    env['MMVIM_CPU_ISA'] = 'sse9'
    res = subprocess.run([sys.executable, '-c', code], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "MMVIM_CPU_ISA='sse9' is not an instruction set" in res.stderr
    assert 'avx512, avx2, generic' in res.stderr


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_inputs_use_a_float32_state(cpu_backend, dtype):
    """16-bit inputs: float32 state and math, output and gradients in the
    input dtype, within that dtype's round-off of the float32 result."""
    x = make_inputs(2, 40, 16, 100, 'group2', 'group2', seed=4)
    half = {k: v.to(dtype) for k, v in x.items()}
    leaves = [half[n].clone().requires_grad_() for n in NAMES]
    out, last = selective_scan(*leaves, delta_softplus=True,
                               return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    # the same rounded inputs in float32 give the float32 result
    full = [half[n].float().requires_grad_() for n in NAMES]
    ref = selective_scan(*full, delta_softplus=True)
    eps = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    scale = ref.abs().max().item()
    assert (out.float() - ref).abs().max().item() <= 2 * eps * scale
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out.float() * w).sum().backward()
    (ref * w).sum().backward()
    for name, a, b in zip(NAMES, leaves, full):
        assert a.grad.dtype == dtype, name
        err = (a.grad.float() - b.grad).abs().max().item()
        assert err <= 4 * eps * b.grad.abs().max().item() + 1e-6, name


def test_bf16_autocast_through_a_mixer(cpu_backend):
    """Under CPU autocast a Vim mixer runs the kernel on bf16 tensors."""
    from mmvim.models.layers import BiMambaMixer
    torch.manual_seed(0)
    mixer = BiMambaMixer(32, d_state=16)
    tokens = torch.randn(2, 50, 32, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = mixer(tokens)
    ref = mixer(tokens)
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 3e-2
    out.float().sum().backward()
    assert torch.isfinite(tokens.grad).all()


def test_memory_is_linear_in_length(cpu_backend):
    """Saved for backward: the inputs and one state per 64 steps."""
    def saved_bytes(length):
        x = make_inputs(1, 16, 16, length, 'var', 'var')
        leaves = [x[k].requires_grad_() for k in NAMES[:5]]
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            selective_scan(*leaves)
        return total
    small, large = saved_bytes(512), saved_bytes(2048)
    assert large <= 4.2 * small
    assert large < 8 * 2048 * 16 * 4  # a (L, dim, N) state would be 16x


def test_no_grad_saves_nothing(scan_cpu):
    x = make_inputs(1, 8, 4, 100, 'var', 'var')
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        scan_cpu(*(x[n] for n in NAMES))
    assert saved == []


def test_only_the_last_state_used(scan_cpu):
    """A gradient that reaches only the last state (no output gradient)."""
    x = make_inputs(1, 8, 4, 100, 'var', 'var', seed=2, dtype=torch.float64)
    leaves = [x[n].clone().requires_grad_() for n in NAMES[:5]]
    assert gradcheck(lambda *a: scan_cpu(*a, return_last_state=True)[1],
                     leaves, eps=1e-6, atol=1e-5)


# ---------------------------------------------------------- selection ---
def test_auto_picks_the_kernel_for_cpu_tensors(ext, monkeypatch):
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'auto')
    assert resolve_backend('selective_scan', torch.zeros(1)) == 'cpu'
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'cpu')
    assert resolve_backend('selective_scan', torch.zeros(1)) == 'cpu'
    monkeypatch.setenv('MMVIM_SCAN_BACKEND', 'torch')
    assert resolve_backend('selective_scan', torch.zeros(1)) == 'torch'


def test_backends_agree_through_the_public_entry(ext, monkeypatch):
    x = make_inputs(2, 40, 16, 100, 'group2', 'group2', seed=11)
    args = [x[n] for n in NAMES]
    outs = {}
    for backend in ('cpu', 'torch'):
        monkeypatch.setenv('MMVIM_SCAN_BACKEND', backend)
        outs[backend] = selective_scan(*args, delta_softplus=True)
    torch.testing.assert_close(outs['cpu'], outs['torch'], rtol=1e-5,
                               atol=1e-5)


def test_missing_extension_is_one_warning_never_a_crash(tmp_path):
    """Without mmvim._ext: `import mmvim` works, auto falls back to the
    torch backend with one warning that says how to build the kernel, and
    forcing `cpu` is an error that says the same."""
    script = textwrap.dedent('''
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == 'mmvim._ext':
                    raise ImportError('mmvim._ext blocked by the test')
        sys.meta_path.insert(0, Block())
        import os, torch
        import mmvim
        from mmvim.ops import selective_scan
        os.environ['MMVIM_SCAN_BACKEND'] = 'auto'
        u = torch.randn(1, 4, 10)
        args = (u, u.abs(), -torch.ones(4, 2), torch.randn(1, 2, 10),
                torch.randn(1, 2, 10))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            selective_scan(*args)
            selective_scan(*args)
        msgs = [str(w.message) for w in caught]
        assert len(msgs) == 1, msgs
        assert 'make install' in msgs[0] and 'falling back' in msgs[0], msgs
        os.environ['MMVIM_SCAN_BACKEND'] = 'cpu'
        try:
            selective_scan(*args)
        except RuntimeError as exc:
            assert 'make install' in str(exc), exc
        else:
            raise AssertionError('forcing cpu without the kernel must fail')
        print('OK')
    ''')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr


def test_kernel_is_registered_with_a_build_hint():
    kern = kernel('selective_scan', 'cpu')
    assert kern is not None and kern.module == 'mmvim.ops.selective_scan_cpu'
    assert 'make install' in kern.install_hint


# --------------------------------------------------- whole backbones ---
def _backbones():
    from mmvim.models import MambaVision, Vim, VMamba
    return {
        'vim': (lambda: Vim('tiny', depth=2, embed_dims=32, img_size=32,
                            with_cls_token=True, use_rope=True,
                            out_indices=(0, 1)), (2, 3, 32, 48)),
        'vmamba': (lambda: VMamba('tiny', dims=16, depths=(1, 1, 2, 1)),
                   (2, 3, 64, 64)),
        'mambavision': (lambda: MambaVision(
            'T', dim=16, in_dim=8, depths=(1, 1, 3, 2),
            num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2)),
            (2, 3, 64, 64)),
    }


@pytest.mark.parametrize('name', ['vim', 'vmamba', 'mambavision'])
def test_backbone_forward_backward_equals_torch_backend(ext, monkeypatch,
                                                        name):
    build, shape = _backbones()[name]
    torch.manual_seed(0)
    model = build().eval()  # no drop-path draws; gradients still flow
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ('cpu', 'torch'):
        monkeypatch.setenv('MMVIM_SCAN_BACKEND', backend)
        model.zero_grad()
        outs = model(image)
        weights = torch.Generator().manual_seed(2)
        sum((o * torch.randn(o.shape, generator=weights)).sum()
            for o in outs).backward()
        results[backend] = [o.detach() for o in outs] + [
            p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(results['cpu']) == len(results['torch'])
    for a, b in zip(results['cpu'], results['torch']):
        scale = b.abs().max().clamp_min(1e-6)
        assert ((a - b).abs().max() / scale).item() < 1e-5
