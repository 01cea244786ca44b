"""Half precision on every backend: the contract of mamba-ssm's and
causal-conv1d's CUDA kernels.

The kernels take float16 / bfloat16 u, delta, z (and B/C when they vary in
time) next to float32 A, D, delta_bias (and constant B/C), load every value
into float32 and compute everything there: delta + delta_bias, softplus, the
recurrence, the silu(z) gate, and the gradients of A, B, C, D and delta_bias,
accumulated in float32. Only the inputs and the output are 16-bit; each
gradient comes back in its input's dtype. causal-conv1d's kernel likewise
sums in float32 and rounds only its output.

The oracle here is that semantics computed in float64 from the same rounded
inputs (mmvim's copy of mamba-ssm's ``selective_scan_ref`` on float64
tensors). mamba-ssm's ``selective_scan_ref`` itself is not that semantics
in one place: it evaluates ``F.silu(z)`` on the 16-bit ``z``, so it rounds
the gate to z's dtype (its only 16-bit intermediate). That is why it is the
less accurate of the two against float64 (``test_closer_to_float64_than_
selective_scan_ref``), and why mamba-ssm's own test runs float32 only (its
float16 / bfloat16 parametrisations are commented out).

Tolerances are mamba-ssm's (tests/ops/test_selective_scan.py): (rtol, atol)
(3e-3, 5e-3) for float16, (3e-2, 5e-2) for bfloat16; weights
max((1e-3, 1e-3), (rtol, atol)) when z is given; du x2, ddelta rtol x5 atol
x10, dA atol x5. They are loose enough that a single 16-bit intermediate can
pass them, so ``test_float32_results_carry_no_16_bit_rounding`` adds a bound
at float32's round-off for what comes back in float32.

The backends are listed once, in :data:`BACKENDS`.
"""
import functools
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from test_causal_conv1d import reference_causal_conv
from test_selective_scan_cpu import _load_ext

from mmvim.ops import causal_conv1d, dispatch, selective_scan
from mmvim.ops.reference import selective_scan_loop


# --------------------------------------------------------------------------
# the backends under test
# --------------------------------------------------------------------------
def _cpu_unavailable():
    _load_ext()  # fails, or skips under MMVIM_NO_EXT=1, as the cpu tests do
    return None


def _triton_unavailable():
    if importlib.util.find_spec('triton') is None:
        return 'triton is not installed'
    if os.environ.get('TRITON_INTERPRET') != '1':
        return 'the triton backend runs CPU tensors only under ' \
               'TRITON_INTERPRET=1'
    return None


# backend -> a check that returns why it cannot run here (None: it can)
_GATES = {'torch': lambda: None, 'cpu': _cpu_unavailable,
          'triton': _triton_unavailable}
BACKENDS = [b for b in ('torch', 'cpu', 'triton') if b in dispatch.BACKENDS]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Forces ``MMVIM_SCAN_BACKEND`` for the test (both ops)."""
    why = _GATES[request.param]()
    if why:
        pytest.skip(why)
    monkeypatch.setenv(dispatch.BACKEND_ENV, request.param)
    assert dispatch.resolve_backend('selective_scan', torch.empty(1)) \
        == request.param
    return request.param


HALF = [pytest.param(torch.float16, id='fp16'),
        pytest.param(torch.bfloat16, id='bf16')]


# --------------------------------------------------------------------------
# selective scan: inputs, oracle, mamba-ssm's tolerances
# --------------------------------------------------------------------------
NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def scan_case(dtype, b_kind, c_kind, with_d, with_z, with_bias, seed=0,
              batch=2, dim=4, dstate=8, length=372):
    """mamba-ssm's test inputs: A, D, delta_bias and constant B/C float32;
    u, delta, z, time-varying B/C and the cotangent in ``dtype``. ``kind``
    'const' (dim, N), 'var' (batch, N, L), 'groupG' (batch, G, N, L)."""
    gen = torch.Generator().manual_seed(seed)

    def bc(kind):
        if kind == 'const':
            return torch.randn(dim, dstate, generator=gen)
        shape = (batch, dstate, length) if kind == 'var' else \
            (batch, int(kind[5:]), dstate, length)
        return torch.randn(shape, generator=gen).to(dtype)

    def act(scale=1.0, rand=False):
        draw = torch.rand if rand else torch.randn
        return (scale * draw(batch, dim, length, generator=gen)).to(dtype)

    x = dict(A=-0.5 * torch.rand(dim, dstate, generator=gen), B=bc(b_kind),
             C=bc(c_kind), D=torch.randn(dim, generator=gen),
             z=act(), delta_bias=0.5 * torch.rand(dim, generator=gen),
             u=act(), delta=act(0.5, rand=True))
    dout = act()
    for name, keep in (('D', with_d), ('z', with_z),
                       ('delta_bias', with_bias)):
        if not keep:
            x[name] = None
    return x, dout


def run_scan(fn, inputs, dout, softplus, cast=None):
    """(out, last_state, {name: grad}) of ``fn`` on fresh leaves (cast to
    ``cast`` if given) for the cotangent ``dout``."""
    leaves = {k: None if v is None else
              v.detach().to(cast or v.dtype).requires_grad_()
              for k, v in inputs.items()}
    out, last = fn(*(leaves[n] for n in NAMES), delta_softplus=softplus,
                   return_last_state=True)
    out.backward(dout.to(out.dtype))
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out.detach(), last.detach(), grads


@functools.cache
def oracle(case):
    """The kernel's semantics in float64 from the rounded inputs of
    ``scan_case(*case[:-1])``, softplus ``case[-1]``."""
    inputs, dout = scan_case(*case[:-1])
    return run_scan(selective_scan_loop, inputs, dout, case[-1],
                    cast=torch.float64)


def selective_scan_ref_literal(u, delta, A, B, C, D=None, z=None,
                               delta_bias=None, delta_softplus=False,
                               return_last_state=False):
    """mamba-ssm's ``selective_scan_ref`` as written: float32 math (u.float()
    etc.), but ``out * F.silu(z)`` with z still 16-bit."""
    f = [None if t is None else t.float() for t in (u, delta, B, C)]
    out, last = selective_scan_loop(f[0], f[1], A, f[2], f[3], D, None,
                                    delta_bias, delta_softplus, True)
    if z is not None:
        out = out * F.silu(z)
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


def mamba_tolerances(dtype, with_z, b_kind, c_kind):
    """{result: (rtol, atol)} exactly as mamba-ssm's test computes them."""
    rtol, atol = (3e-3, 5e-3) if dtype == torch.float16 else (3e-2, 5e-2)
    rtolw, atolw = 1e-3, 1e-3
    if with_z:  # "If we have z, the errors on the weights seem higher"
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    return dict(out=(rtol, atol), last=(rtol, atol),
                u=(rtol * 2, atol * 2), delta=(rtol * 5, atol * 10),
                A=(rtolw, atolw * 5),
                B=(rtolw, atolw) if b_kind == 'const' else (rtol, atol),
                C=(rtolw, atolw) if c_kind == 'const' else (rtol, atol),
                D=(rtolw, atolw), z=(rtolw, atolw),
                delta_bias=(rtolw, atolw))


BC = [('const', 'const'), ('var', 'var'), ('group2', 'group2'),
      ('const', 'var')]
# (D, z, delta_bias, softplus): all off, all on, the example (z
# only), and the rest without z
OPTIONS = [(False, False, False, False), (True, True, True, True),
           (False, True, False, False), (True, False, True, True)]


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('b_kind,c_kind', BC)
@pytest.mark.parametrize('with_d,with_z,with_bias,softplus', OPTIONS)
def test_selective_scan_meets_mamba_tolerances(backend, dtype, b_kind, c_kind,
                                               with_d, with_z, with_bias,
                                               softplus):
    """Output, last state and every gradient against the float64 oracle at
    mamba-ssm's tolerances; L = 372 is not a multiple of any chunk size.
    The output (and every gradient) has its input's dtype, the last state
    is float32."""
    case = (dtype, b_kind, c_kind, with_d, with_z, with_bias)
    inputs, dout = scan_case(*case)
    out, last, grads = run_scan(selective_scan, inputs, dout, softplus)
    ref_out, ref_last, ref_grads = oracle(case + (softplus,))
    tol = mamba_tolerances(dtype, with_z, b_kind, c_kind)

    assert out.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(out, ref_out.to(dtype), rtol=tol['out'][0],
                               atol=tol['out'][1])
    torch.testing.assert_close(last, ref_last.float(), rtol=tol['last'][0],
                               atol=tol['last'][1])
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, name
        rtol, atol = tol[name]
        torch.testing.assert_close(
            g, ref_grads[name].to(g.dtype), rtol=rtol, atol=atol,
            msg=lambda m, n=name: f'd{n}: {m}')
    # without return_last_state: the same output alone
    single = selective_scan(*(inputs[n] for n in NAMES),
                            delta_softplus=softplus)
    assert torch.equal(single, out)


def _float32_errors(fn, case, softplus):
    """{result: max |error| / max |oracle|} for what the kernel returns in
    float32: the last state and the gradients of the float32 inputs."""
    inputs, dout = scan_case(*case)
    _, last, grads = run_scan(fn, inputs, dout, softplus)
    _, ref_last, ref_grads = oracle(case + (softplus,))
    pairs = dict(last=(last, ref_last))
    pairs.update({n: (g, ref_grads[n]) for n, g in grads.items()
                  if inputs[n].dtype == torch.float32})
    return {n: (got.double() - ref).abs().max().item()
            / ref.abs().max().item() for n, (got, ref) in pairs.items()}


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('b_kind,c_kind', [('const', 'const'),
                                           ('group2', 'group2')])
def test_float32_results_carry_no_16_bit_rounding(backend, dtype, b_kind,
                                                  c_kind):
    """What the kernel returns in float32 (the last state; the gradients of
    A, D, delta_bias and of constant B/C) is float32 arithmetic on the
    rounded inputs: within 2e-5 of the float64 oracle relative to the
    tensor's scale (measured: < 4e-6 on both backends). One 16-bit
    intermediate breaks that: mamba-ssm's ``selective_scan_ref``, whose
    only one is the silu(z) gate, is off by more here (1e-4..4e-2)."""
    case = (dtype, b_kind, c_kind, True, True, True)
    errors = _float32_errors(selective_scan, case, True)
    assert {'last', 'A', 'D', 'delta_bias'} <= errors.keys()
    for name, err in errors.items():
        assert err <= 2e-5, f'{name}: relative error {err:.3g}'
    # the bound sees a single 16-bit gate
    literal = _float32_errors(selective_scan_ref_literal, case, True)
    assert max(literal.values()) > 2e-5, literal


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_closer_to_float64_than_selective_scan_ref(backend, seed):
    """The issue's example: u, delta, z float16 (2, 4, 372), constant B/C
    (4, 8), z given, no D, no softplus. mamba-ssm's ``selective_scan_ref``
    rounds silu(z) to float16, so its gradients of the float32 weights are
    off the float64 truth by 6e-3..4e-1 (max abs); the backends, with the
    gate in float32 as the CUDA kernel has it, by 8e-6..4e-3: at least ten
    times closer for dA, dB and dC (measured: over 60 times)."""
    case = (torch.float16, 'const', 'const', False, True, False)
    inputs, dout = scan_case(*case, seed=seed)
    _, _, grads = run_scan(selective_scan, inputs, dout, False)
    _, _, lit = run_scan(selective_scan_ref_literal, inputs, dout, False)
    _, _, truth = oracle(case + (seed, False))
    for name in ('A', 'B', 'C'):
        ours = (grads[name].double() - truth[name]).abs().max().item()
        ref = (lit[name].double() - truth[name]).abs().max().item()
        assert 10 * ours < ref, f'd{name}: ours {ours:.3g}, ref {ref:.3g}'


# --------------------------------------------------------------------------
# causal_conv1d: 16-bit x with float32 weight and bias
# --------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('width', [2, 3, 4])
@pytest.mark.parametrize('with_bias', [True, False])
@pytest.mark.parametrize('activation', [None, 'silu'])
def test_causal_conv1d_half_x_float32_weight(backend, dtype, width,
                                             with_bias, activation):
    """As causal-conv1d's kernel: float32 sums, output rounded once to x's
    dtype (so within one of its ulps of the float64 result), dx in x's
    dtype, dweight / dbias float32 with float32 round-off only."""
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(2, 16, 37, generator=gen).to(dtype)
    weight = torch.randn(16, width, generator=gen)
    bias = torch.randn(16, generator=gen) if with_bias else None
    dout = torch.randn(2, 16, 37, generator=gen).to(dtype)

    def run(fn, cast=None):
        leaves = [None if t is None else
                  t.detach().to(cast or t.dtype).requires_grad_()
                  for t in (x, weight, bias)]
        out = fn(*leaves, activation)
        out.backward(dout.to(out.dtype))
        return out.detach(), [None if t is None else t.grad for t in leaves]

    out, grads = run(causal_conv1d)
    ref, ref_grads = run(reference_causal_conv, torch.float64)
    eps = torch.finfo(dtype).eps
    assert out.dtype == dtype
    # one rounding of a float32 result: within an ulp (eps * |value|); the
    # atol covers float32's own error where the sum cancels to ~0
    torch.testing.assert_close(out.double(), ref, rtol=eps,
                               atol=1e-5 * ref.abs().max().item())
    for name, g, r, t in zip(('x', 'weight', 'bias'), grads, ref_grads,
                             (x, weight, bias)):
        if t is None:
            continue
        assert g.dtype == t.dtype, name
        rtol = eps if g.dtype == dtype else 1e-5
        torch.testing.assert_close(g.double(), r, rtol=rtol,
                                   atol=1e-5 * r.abs().max().item(),
                                   msg=lambda m, n=name: f'd{n}: {m}')


def test_causal_conv1d_under_autocast_computes_in_float32(backend):
    """Under CPU autocast the conv is not put back into bfloat16: the
    result equals the float32 computation rounded once."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 37, generator=gen).to(torch.bfloat16)
    weight, bias = torch.randn(16, 4, generator=gen), torch.randn(16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = causal_conv1d(x, weight, bias, 'silu')
    ref = causal_conv1d(x.float(), weight, bias, 'silu')
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref.to(torch.bfloat16))


# --------------------------------------------------------------------------
# the mixers under CPU autocast
# --------------------------------------------------------------------------
def _mixer(name):
    from mmvim.models.layers import SS2D, BiMambaMixer, MambaVisionMixer
    torch.manual_seed(0)
    if name == 'vim':
        m, x = BiMambaMixer(32, d_state=16), torch.randn(2, 50, 32)
    elif name == 'vmamba':
        m, x = SS2D(32, d_state=1, ssm_ratio=1.0), torch.randn(2, 6, 7, 32)
    else:
        m, x = MambaVisionMixer(32, d_state=8), torch.randn(2, 50, 32)
    with torch.no_grad():  # off the symmetric init (zero biases, D = 1)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m, x


@pytest.mark.parametrize('name', ['vim', 'vmamba', 'mambavision'])
def test_mixer_under_bf16_autocast(backend, name):
    """Forward and backward of each backbone's mixer under
    ``torch.autocast('cpu', dtype=torch.bfloat16)`` run on the backend
    and agree with float32 to bfloat16's precision: the output and every
    gradient within 16 bf16 ulps (16 * 2^-8 = 6%) of the tensor's scale
    (the bf16 matmuls around the scan dominate; measured: <= 2.1%, the
    gradients of dt_proj's bias and weight)."""
    mixer, x = _mixer(name)
    results = {}
    for amp in (True, False):
        mixer.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            y = mixer(xi)
        assert y.dtype == (torch.bfloat16 if amp else torch.float32)
        cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (y.float() * cot).sum().backward()
        results[amp] = dict(out=y.detach().float(), x=xi.grad)
        results[amp].update({n: p.grad.clone()
                             for n, p in mixer.named_parameters()
                             if p.grad is not None})
    bound = 16 * 2 ** -8
    for key, ref in results[False].items():
        got = results[True][key]
        assert got.dtype == torch.float32, key
        err = (got - ref).abs().max().item()
        scale = ref.abs().max().item()
        assert err <= bound * scale, f'{key}: {err:.3g} of {scale:.3g}'
