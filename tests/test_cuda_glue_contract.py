"""Contract test of mmvim's GLUE to the CUDA kernels, on CPU.

Not a test of the kernels (their numerics are the GPU parity tests' job,
``pytest -m gpu``): it checks that every call mmvim makes on its 'cuda'
branch is one the real kernels accept, through the real Python interface
code of mamba-ssm 2.3.2.post1 (``selective_scan_fn``) and causal-conv1d
1.7.0 (``causal_conv1d_fn``), and that what comes back flows through our
code as the torch backend's results do.

The interfaces are imported from the packages' sdists (fetched with pip
into .cache/kernel-sdists on first use, never importable as ``mamba_ssm``);
only the compiled modules are replaced, by stand-ins that enforce the C++
entry points' checks and compute with our torch backend
(tests/cuda_glue_standins.py). Our dispatch is pointed at the 'cuda'
branch for CPU tensors by patching ``resolve_backend`` in the two op
modules, so ``mmvim.ops.selective_scan`` / ``causal_conv1d`` run their
kernel branch exactly as on a GPU.

Half precision is what ``torch.autocast('cuda', dtype)`` hands the mixers
on a GPU, emulated on CPU tensors by ``cuda_autocast`` (CUDA's op lists
read from the installed torch; see its docstring). Every mixer is run
twice from the same weights and input: through the kernel interfaces and
on the torch backend; outputs and all gradients must be equal.
"""
import contextlib
import copy
import importlib
import os
import sys
from unittest import mock

import pytest
import torch
from cuda_glue_standins import cuda_autocast, load_interfaces

from mmvim.models import MambaVision, Vim, VMamba
from mmvim.models.layers import SS2D, BiMambaMixer, MambaVisionMixer
from mmvim.ops import causal_conv1d, dispatch, selective_scan

SCAN_MOD = importlib.import_module('mmvim.ops.selective_scan')
CONV_MOD = importlib.import_module('mmvim.ops.causal_conv1d')

LOW = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


@pytest.fixture(scope='module')
def kern():
    """The real interfaces over the stand-ins (fetched once per cache)."""
    before = {k: sys.modules.get(k) for k in ('mamba_ssm', 'causal_conv1d')}
    k = load_interfaces()
    # the sources are visible to this test only
    assert {k_: sys.modules.get(k_) for k_ in before} == before
    return k


def _preloaded(fn, module, attr):
    lazy = dispatch.LazyKernel(module, attr, 'contract test')
    lazy._fn, lazy._tried = fn, True
    return lazy


@contextlib.contextmanager
def through_interfaces(kern):
    """mmvim's 'cuda' branch on CPU tensors, with the kernels registered in
    the dispatch being the real interface functions."""
    with mock.patch.object(SCAN_MOD, 'resolve_backend',
                           lambda op, x: 'cuda'), \
            mock.patch.object(CONV_MOD, 'resolve_backend',
                              lambda op, x: 'cuda'), \
            mock.patch.dict(dispatch.KERNELS['selective_scan'], {
                'cuda': _preloaded(kern.selective_scan_fn,
                                   'mamba_ssm.ops.selective_scan_interface',
                                   'selective_scan_fn')}), \
            mock.patch.dict(dispatch.KERNELS['causal_conv1d'], {
                'cuda': _preloaded(kern.causal_conv1d_fn, 'causal_conv1d',
                                   'causal_conv1d_fn')}):
        yield


@contextlib.contextmanager
def torch_backend():
    with mock.patch.dict(os.environ, {dispatch.BACKEND_ENV: 'torch'}):
        yield


@contextlib.contextmanager
def precision(name):
    if LOW.get(name) is None:
        yield
    else:
        with cuda_autocast(LOW[name]):
            yield


def assert_same(a, b, what, low=None):
    """Equal: bitwise (forward results, ``low=None``), or, for gradients,
    within a few ulps of ``low`` (the run's lowest precision; 8 for float32,
    2 for 16-bit) of the largest value. Forward passes see the same values
    on both routes, but the interfaces hand the backward kernels some
    tensors in another memory layout (they make a transposed delta or dout
    contiguous, the causal-conv1d C++ makes dout channel-last like x), and
    torch's reductions and half-precision convs then round in another
    order. A glue error (wrong dtype, layout, group, flip, missing D or
    bias) is off by O(1); half-precision arithmetic where the kernel keeps
    float32 already breaks the bitwise forward."""
    assert a.dtype == b.dtype, f'{what}: dtype {a.dtype} vs {b.dtype}'
    assert a.shape == b.shape, f'{what}: shape {a.shape} vs {b.shape}'
    if torch.equal(a, b):
        return
    diff = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    msg = f'{what}: max |diff| {diff:.3g} of max |value| {scale:.3g}'
    assert low is not None, msg + ' (must be bitwise equal)'
    ulps = 8 if low == torch.float32 else 2
    assert diff <= ulps * torch.finfo(low).eps * scale, msg


def scan_inputs(batch, dim, dstate, length, b_kind, c_kind, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def bc(kind):
        if kind == 'const':
            return torch.randn(dim, dstate, generator=gen)
        if kind == 'var':
            return torch.randn(batch, dstate, length, generator=gen)
        return torch.randn(batch, int(kind[5:]), dstate, length,
                           generator=gen)
    return dict(u=torch.randn(batch, dim, length, generator=gen),
                delta=torch.rand(batch, dim, length, generator=gen) - 0.5,
                A=-torch.rand(dim, dstate, generator=gen) - 0.1,
                B=bc(b_kind), C=bc(c_kind),
                D=torch.randn(dim, generator=gen),
                z=torch.randn(batch, dim, length, generator=gen),
                delta_bias=torch.randn(dim, generator=gen) * 0.5)


# --------------------------------------------------------------------------
# the ops: mmvim.ops.selective_scan / causal_conv1d on their cuda branch
# --------------------------------------------------------------------------
@pytest.mark.parametrize('b_kind,c_kind,length', [
    ('const', 'const', 37), ('var', 'var', 128), ('group2', 'group2', 64),
    ('group4', 'group4', 37), ('const', 'var', 50), ('var', 'var', 2100)])
@pytest.mark.parametrize('dtype', ['fp32', 'bf16'])
@pytest.mark.parametrize('with_z', [True, False])
def test_selective_scan_op_through_interface(kern, b_kind, c_kind, length,
                                             dtype, with_z):
    """selective_scan(...) on the cuda branch equals the torch backend:
    output, last state (sliced by the wrapper from the kernel's chunk
    states; 2100 steps are two 2048-step chunks) and every gradient."""
    x = scan_inputs(2, 8, 4, length, b_kind, c_kind)
    low = LOW[dtype] or torch.float32
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    results = {}
    for route in ('kernel', 'torch'):
        leaves = {n: x[n].to(low if n in ('u', 'delta', 'z') or (
            n in 'BC' and x[n].dim() > 2) else torch.float32)
            .requires_grad_() for n in names}
        if not with_z:
            leaves['z'] = None
        ctx = through_interfaces(kern) if route == 'kernel' \
            else torch_backend()
        calls = len(kern.scan.calls)
        with ctx:
            out, last = selective_scan(*leaves.values(), delta_softplus=True,
                                       return_last_state=True)
        cot = torch.randn(out.shape, generator=torch.Generator()
                          .manual_seed(1)).to(out.dtype)
        (out * cot).sum().backward()
        if route == 'kernel':
            assert [c[0] for c in kern.scan.calls[calls:]] == ['fwd', 'bwd']
        results[route] = [out, last] + [leaves[n].grad for n in names
                                        if leaves[n] is not None]
    for i, (a, b) in enumerate(zip(results['kernel'], results['torch'])):
        assert_same(a, b, f'result {i}', None if i < 2 else low)


@pytest.mark.parametrize('b_kind,c_kind', [('var', 'var'),
                                           ('group2', 'group4'),
                                           ('const', 'var')])
def test_selective_scan_reverse_through_interface(kern, b_kind, c_kind):
    """reverse=... on the cuda branch: the kernel cannot run blocks
    backwards, so the op flips them around it (and regroups a B/C shared by
    reversed and forward blocks); equal to the torch backend, which does
    the same flips. mamba-ssm's kernel takes grouped B/C only when both
    vary with time, so a constant B with a C shared by forward and reversed
    channels is a clear error there."""
    x = scan_inputs(2, 8, 4, 40, b_kind, c_kind, seed=3)
    if b_kind == 'const':
        with through_interfaces(kern), pytest.raises(
                NotImplementedError, match='both constant or both'):
            selective_scan(*(x[n] for n in ('u', 'delta', 'A', 'B', 'C')),
                           reverse=(False, True))
        return
    names = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']
    results = {}
    for route in ('kernel', 'torch'):
        leaves = [x[n].clone().requires_grad_() for n in names]
        ctx = through_interfaces(kern) if route == 'kernel' \
            else torch_backend()
        calls = len(kern.scan.calls)
        with ctx:
            out, last = selective_scan(*leaves, delta_softplus=True,
                                       return_last_state=True,
                                       reverse=(True, False, False, True))
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() \
            .backward()
        if route == 'kernel':
            assert [c[0] for c in kern.scan.calls[calls:]] == ['fwd', 'bwd']
        results[route] = [out, last] + [t.grad for t in leaves]
    for i, (a, b) in enumerate(zip(results['kernel'], results['torch'])):
        assert_same(a, b, f'result {i}', None if i < 2 else torch.float32)


@pytest.mark.parametrize('layout', ['contiguous', 'channel_last'])
@pytest.mark.parametrize('dtype', ['fp32', 'fp16'])
@pytest.mark.parametrize('with_bias', [True, False])
def test_causal_conv1d_op_through_interface(kern, layout, dtype, with_bias):
    gen = torch.Generator().manual_seed(0)
    low = LOW[dtype] or torch.float32
    base = torch.randn(2, 24, 16, generator=gen)  # (b, L, dim)
    w = torch.randn(16, 4, generator=gen)
    b = torch.randn(16, generator=gen) if with_bias else None
    results = {}
    for route in ('kernel', 'torch'):
        xb = base.clone().requires_grad_()
        wl = w.clone().requires_grad_()
        bl = None if b is None else b.clone().requires_grad_()
        x = xb.to(low).transpose(1, 2)  # channel-last view (b, dim, L)
        if layout == 'contiguous':
            x = x.contiguous()
        ctx = through_interfaces(kern) if route == 'kernel' \
            else torch_backend()
        calls = len(kern.conv.calls)
        # weight/bias stay fp32 while x is half: as autocast hands them
        with ctx, precision(dtype):
            out = causal_conv1d(x, wl, bl, 'silu')
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)
         ).sum().backward()
        if route == 'kernel':
            assert [c[0] for c in kern.conv.calls[calls:]] == ['fwd', 'bwd']
        results[route] = [out, xb.grad, wl.grad] + (
            [] if bl is None else [bl.grad])
    for i, (a, b_) in enumerate(zip(results['kernel'], results['torch'])):
        assert_same(a, b_, f'result {i}', None if i == 0 else low)


# --------------------------------------------------------------------------
# every mixer, forward and backward, fp32 and CUDA-autocast fp16 / bf16
# --------------------------------------------------------------------------
def make_mixer(name):
    """The mixers at the channel widths of the released models: Vim-Ti
    (dim 192), VMamba-T stage 1 (96, ssm_ratio 1, d_state 1: the released
    v05_noz), MambaVision-T stage 3 (320, d_state 8)."""
    torch.manual_seed(0)
    if name.startswith('vim'):
        m = BiMambaMixer(192, fused=name == 'vim_fused', num_layers=24)
    elif name == 'vmamba_ss2d':
        m = SS2D(96, d_state=1, ssm_ratio=1.0)
    else:
        m = MambaVisionMixer(320, d_state=8)
    with torch.no_grad():  # move off the symmetric init (zero biases, D=1)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def mixer_input(mixer, size):
    gen = torch.Generator().manual_seed(2)
    h, w = size
    if isinstance(mixer, SS2D):
        return torch.randn(1, h, w, mixer.dim, generator=gen)
    return torch.randn(1, h * w, mixer.dim, generator=gen)


# (scan calls, conv calls) per forward
KERNEL_CALLS = {'vim_fused': (1, 1), 'vim_separate': (2, 2),
                'vmamba_ss2d': (1, 0), 'mambavision': (1, 0)}


def run_mixer(mixer, x, dtype, ctx):
    """Forward (under ``dtype``'s autocast, or with the module and input
    cast for 'bf16_weights') and backward of a fixed random cotangent."""
    m = copy.deepcopy(mixer)
    if dtype == 'bf16_weights':
        m, x = m.to(torch.bfloat16), x.to(torch.bfloat16)
    xi = x.clone().requires_grad_()
    with ctx, precision(dtype):
        y = m(xi)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    (y.float() * cot).sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    return y, xi.grad, grads


def check_against_torch_backend(kern, mixer, x, dtype, n_scan, n_conv,
                                exact_forward=True):
    scan0, conv0 = len(kern.scan.calls), len(kern.conv.calls)
    y_k, gx_k, g_k = run_mixer(mixer, x, dtype, through_interfaces(kern))
    scans, convs = kern.scan.calls[scan0:], kern.conv.calls[conv0:]
    assert [c[0] for c in scans] == ['fwd'] * n_scan + ['bwd'] * n_scan
    assert [c[0] for c in convs] == ['fwd'] * n_conv + ['bwd'] * n_conv
    low = LOW.get(dtype) or (torch.bfloat16 if dtype == 'bf16_weights'
                             else torch.float32)
    weights = torch.bfloat16 if dtype == 'bf16_weights' else torch.float32
    for entry, args in scans:
        for arg in ('u', 'delta', 'z', 'dout'):
            if args.get(arg) is not None:
                assert args[arg]['dtype'] == low, (entry, arg, args[arg])
        for arg in ('B', 'C'):
            assert args[arg]['dtype'] == low, (entry, arg, args[arg])
        for arg in ('A', 'D', 'delta_bias'):
            assert args[arg]['dtype'] == torch.float32, (entry, arg)
    for _, args in convs:
        assert args['x']['dtype'] == low
        assert args['weight']['dtype'] == args['bias']['dtype'] == weights

    y_t, gx_t, g_t = run_mixer(mixer, x, dtype, torch_backend())
    assert len(kern.scan.calls) == scan0 + 2 * n_scan  # torch: no kernel
    assert_same(y_k, y_t, 'output', None if exact_forward else low)
    assert_same(gx_k, gx_t, 'input grad', low)
    assert g_k.keys() == g_t.keys()
    for n in g_t:
        assert g_t[n] is not None, n
        assert_same(g_k[n], g_t[n], f'grad of {n}', low)


@pytest.mark.parametrize('size', [(8, 16), (5, 7)], ids=['L128', 'L35'])
@pytest.mark.parametrize('dtype', ['fp32', 'fp16', 'bf16', 'bf16_weights'])
@pytest.mark.parametrize('name', list(KERNEL_CALLS))
def test_mixer_through_kernel_interfaces(kern, name, dtype, size):
    """The mixer on mamba-ssm's / causal-conv1d's interfaces (stand-in
    kernels) and on the torch backend: every kernel call passes the C++
    checks, with the dtypes CUDA autocast gives (u, delta, B, C, z, x in the
    autocast dtype; A, D, delta_bias and the conv weight/bias float32; with
    a bf16 model the conv weights are bf16, A/D/delta_bias still float32),
    and the output, the input gradient and every parameter gradient are
    equal."""
    mixer = make_mixer(name)
    check_against_torch_backend(kern, mixer, mixer_input(mixer, size), dtype,
                                *KERNEL_CALLS[name])


@pytest.mark.parametrize('dtype', ['fp32', 'bf16'])
def test_vim_separate_scans_with_channels_not_divisible_by_8(kern, dtype):
    """fused=False hands causal_conv1d channel slices of the in_proj output
    (contiguous along L, as mamba-ssm computes it), with d_inner = 20 not
    divisible by 8 (the conv kernel takes channel-last input only with
    channels divisible by 8; the glue copies such input contiguous)."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(10, fused=False)
    x = torch.randn(2, 24, 10, generator=torch.Generator().manual_seed(1))
    check_against_torch_backend(kern, mixer, x, dtype, 2, 2,
                                exact_forward=False)


def tiny_backbone(name):
    torch.manual_seed(0)
    if name == 'vim':  # cls token (odd length), rope, fp32 residual
        return Vim('tiny', depth=2, embed_dims=32, img_size=64,
                   with_cls_token=True, use_rope=True, rope_residual=True,
                   out_indices=(0, 1))
    if name == 'vmamba':
        return VMamba('tiny', dims=16, depths=(1, 1, 1, 1))
    return MambaVision('T', dim=16, in_dim=8, depths=(1, 1, 3, 2),
                       num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2))


@pytest.mark.parametrize('dtype', ['fp32', 'fp16'])
@pytest.mark.parametrize('name', ['vim', 'vmamba', 'mambavision'])
def test_backbone_through_kernel_interfaces(kern, name, dtype):
    """A whole (tiny) backbone, forward and backward, through the kernel
    interfaces equals the torch backend: what the blocks around the mixers
    hand them (norms, residual dtype, rope, windows) is kernel-clean too."""
    model = tiny_backbone(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    results = {}
    for route in ('kernel', 'torch'):
        m = copy.deepcopy(model)
        scan0 = len(kern.scan.calls)
        ctx = through_interfaces(kern) if route == 'kernel' \
            else torch_backend()
        torch.manual_seed(5)  # the same drop-path draws in both runs
        with ctx, precision(dtype):
            outs = m(x)
        sum((o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape))
            .sum() for o in outs).backward()
        assert (len(kern.scan.calls) > scan0) == (route == 'kernel')
        results[route] = list(outs) + [p.grad for p in m.parameters()
                                       if p.grad is not None]
    low = LOW[dtype] or torch.float32
    assert len(results['kernel']) == len(results['torch'])
    n_out = len(outs)
    for i, (a, b) in enumerate(zip(results['kernel'], results['torch'])):
        assert_same(a, b, f'output {i}' if i < n_out else f'grad {i}',
                    None if i < n_out else low)


def test_cuda_autocast_emulation_casts_like_cuda():
    """The emulation itself: CUDA autocast's lists, not CPU's (on CPU
    autocast exp stays bf16 and layer_norm keeps bf16 in bf16 out)."""
    a = torch.randn(4, 4)
    with cuda_autocast(torch.bfloat16) as policy:
        assert torch.nn.functional.linear(a, a).dtype == torch.bfloat16
        assert torch.einsum('ij,jk->ik', a, a).dtype == torch.bfloat16
        assert (a @ a).dtype == torch.bfloat16
        h = a.to(torch.bfloat16)
        assert torch.exp(h).dtype == torch.float32
        assert torch.nn.functional.softplus(h).dtype == torch.float32
        assert torch.nn.functional.layer_norm(h, (4,)).dtype == torch.float32
        assert h.sum().dtype == torch.float32
        assert torch.cat((h, a)).dtype == torch.float32
        assert (h * 2).dtype == torch.bfloat16  # unlisted: as its input
        with torch.autocast('cpu', enabled=False):  # regions that opt out
            assert (a @ a).dtype == torch.float32
    assert {'linear', 'einsum', 'matmul', 'exp', 'softplus', 'layer_norm',
            'sum', 'cat'} <= policy.seen
    assert (a @ a).dtype == torch.float32  # off outside


# --------------------------------------------------------------------------
# the stand-ins reject what the kernels reject
# --------------------------------------------------------------------------
def _scan_args(dtype=torch.float16, length=128, **change):
    x = scan_inputs(2, 8, 4, length, 'var', 'var')
    args = dict(u=x['u'].to(dtype), delta=x['delta'].to(dtype), A=x['A'],
                B=x['B'].to(dtype), C=x['C'].to(dtype), D=x['D'],
                z=x['z'].to(dtype), delta_bias=x['delta_bias'])
    args.update(change)
    return args


def _misaligned(t):
    """Same values, data pointer one element past an aligned address."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


SCAN_REJECTS = {
    'delta_bias half': lambda: _scan_args(
        delta_bias=_scan_args()['delta_bias'].half()),
    'D half': lambda: _scan_args(D=_scan_args()['D'].half()),
    'A half': lambda: _scan_args(A=_scan_args()['A'].half()),
    'delta fp32 with half u': lambda: _scan_args(
        delta=_scan_args()['delta'].float()),
    'B fp32 with half u': lambda: _scan_args(B=_scan_args()['B'].float()),
    'constant B half': lambda: _scan_args(B=torch.randn(8, 4).half()),
    'z bf16 with fp16 u': lambda: _scan_args(
        z=_scan_args()['z'].bfloat16()),
    'float64': lambda: _scan_args(dtype=torch.float64),
    'B and C grouped differently': lambda: _scan_args(
        C=torch.randn(2, 2, 4, 128).half()),
    'groups not dividing dim': lambda: _scan_args(
        B=torch.randn(2, 3, 4, 128).half(),
        C=torch.randn(2, 3, 4, 128).half()),
    'dstate > 256': lambda: _scan_args(
        A=-torch.rand(8, 257), B=torch.randn(2, 257, 128).half(),
        C=torch.randn(2, 257, 128).half()),
    'misaligned u rows (vector loads)': lambda: _scan_args(
        u=_misaligned(_scan_args()['u'])),
}


@pytest.mark.parametrize('case', list(SCAN_REJECTS))
def test_scan_standin_rejects_what_the_kernel_rejects(kern, case):
    with pytest.raises(RuntimeError, match='CUDA kernel rejects'):
        kern.selective_scan_fn(**SCAN_REJECTS[case](), delta_softplus=True)


def test_scan_standin_accepts_the_contract(kern):
    """...and the same call without the fault goes through (the rejections
    above are not an accident of the arguments)."""
    out = kern.selective_scan_fn(**_scan_args(), delta_softplus=True)
    assert out.dtype == torch.float16 and out.shape == (2, 8, 128)


CONV_REJECTS = {
    'nn.Conv1d weight (dim, 1, width)': lambda x, w, b: (
        x, w[:, None], b),
    'width 5': lambda x, w, b: (x, torch.randn(16, 5), b),
    'bias dtype differs from weight': lambda x, w, b: (x, w, b.half()),
    'channel-last with 12 channels': lambda x, w, b: (
        torch.randn(2, 24, 12).transpose(1, 2), w[:12], b[:12]),
    'channel-last with strides not multiple of 8': lambda x, w, b: (
        torch.randn(2, 24, 20)[..., :16].transpose(1, 2), w, b),
    'float64 x': lambda x, w, b: (x.double(), w, b),
    'misaligned rows': lambda x, w, b: (_misaligned(x), w, b),
}


@pytest.mark.parametrize('case', list(CONV_REJECTS))
def test_conv_standin_rejects_what_the_kernel_rejects(kern, case):
    x, w, b = torch.randn(2, 16, 24), torch.randn(16, 4), torch.randn(16)
    x, w, b = CONV_REJECTS[case](x, w, b)
    with pytest.raises(RuntimeError, match='CUDA kernel rejects'):
        kern.causal_conv1d_fn(x, w, b, activation='silu')
    # the unmodified call is accepted
    kern.causal_conv1d_fn(torch.randn(2, 16, 24), torch.randn(16, 4),
                          torch.randn(16), activation='silu')
