"""CUDA kernels vs the torch backend at the shapes the released models use,
in float32, float16 and bfloat16 (GPU only; ``pytest -m gpu``, run by
``tools/gpu_check.py``). The argument contract itself is checked on CPU by
tests/test_cuda_glue_contract.py; this is the numerics."""
import pytest
import torch

from mmvim.ops import causal_conv1d, selective_scan

# name: (batch, channels, d_state, length, B/C kind, with z)
SCAN_SHAPES = {
    # Vim-Ti, both directions fused: 2 x 384 channels, 2 groups, 32x32 tokens
    'vim_ti_fused_512px': (2, 768, 16, 1024, 'group2', True),
    # Vim-Ti with the class token at 224 (odd length), one direction
    'vim_ti_cls_224px': (2, 384, 16, 197, 'var', True),
    # VMamba-T stage 1 at 224: 4 routes x 96 channels, d_state 1, 2 chunks
    'vmamba_t_stage1_224px': (2, 384, 1, 3136, 'group4', False),
    # MambaVision-T stage 3 mixer: 160 channels, d_state 8, a 14x14 window
    'mambavision_t_stage3': (2, 160, 8, 196, 'var', False),
}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16,
          'bf16': torch.bfloat16}
TOL = {'fp32': 2e-3, 'fp16': 1e-2, 'bf16': 3e-2}


def _kernels_or_skip():
    if not torch.cuda.is_available():
        pytest.skip('needs a CUDA device')
    from mmvim.ops import cuda_kernel_status
    missing = {k: v for k, v in cuda_kernel_status().items() if v}
    if missing:
        pytest.skip(f'CUDA kernels unavailable: {missing}')


def _close(a, b, tol, what):
    scale = b.float().abs().max().clamp_min(1.0)
    err = ((a.float() - b.float()).abs().max() / scale).item()
    assert err < tol, f'{what}: max error {err:.3g} of max |value|'


def _scan_inputs(batch, dim, dstate, length, kind, with_z, dtype):
    gen = torch.Generator(device='cuda').manual_seed(0)

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=gen, device='cuda') * scale
                ).to(dt)
    groups = 1 if kind == 'var' else int(kind[5:])
    bc = (batch, dstate, length) if kind == 'var' else \
        (batch, groups, dstate, length)
    return dict(
        u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5),
        A=-torch.rand(dim, dstate, generator=gen, device='cuda') - 0.1,
        B=rnd(*bc), C=rnd(*bc), D=rnd(dim, dt=torch.float32),
        z=rnd(batch, dim, length) if with_z else None,
        delta_bias=rnd(dim, scale=0.5, dt=torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('shape', list(SCAN_SHAPES))
def test_scan_kernel_matches_torch_at_model_shapes(shape, dtype, monkeypatch):
    _kernels_or_skip()
    x = _scan_inputs(*SCAN_SHAPES[shape], DTYPES[dtype])
    results = {}
    for backend in ('cuda', 'torch'):
        monkeypatch.setenv('MMVIM_SCAN_BACKEND', backend)
        leaves = {k: None if v is None else v.clone().requires_grad_()
                  for k, v in x.items()}
        out, last = selective_scan(**leaves, delta_softplus=True,
                                   return_last_state=True)
        cot = torch.randn(out.shape, device='cuda',
                          generator=torch.Generator('cuda').manual_seed(1))
        (out.float() * cot).sum().backward()
        results[backend] = [out, last] + [v.grad for v in leaves.values()
                                          if v is not None]
    names = ['out', 'last_state'] + [k for k, v in x.items() if v is not None]
    for name, a, b in zip(names, results['cuda'], results['torch']):
        assert a.dtype == b.dtype, name
        _close(a, b, TOL[dtype], f'{shape} {dtype} {name}')


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('layout', ['contiguous', 'channel_last'])
@pytest.mark.parametrize('weight_fp32', [True, False],
                         ids=['weight_fp32', 'weight_like_x'])
def test_causal_conv1d_kernel_matches_torch(dtype, layout, weight_fp32,
                                            monkeypatch):
    """Vim-Ti's conv (384 channels, width 4, 32x32 tokens): contiguous as
    the fused mixer passes it, channel-last as fused=False does; the
    weight in float32 (autocast) or in the input dtype (a half model)."""
    _kernels_or_skip()
    gen = torch.Generator(device='cuda').manual_seed(0)
    low = DTYPES[dtype]
    base = torch.randn(2, 1024, 384, generator=gen, device='cuda')
    w = torch.randn(384, 4, generator=gen, device='cuda') * 0.5
    b = torch.randn(384, generator=gen, device='cuda') * 0.1
    if not weight_fp32:
        w, b = w.to(low), b.to(low)
    results = {}
    for backend in ('cuda', 'torch'):
        monkeypatch.setenv('MMVIM_SCAN_BACKEND', backend)
        xb, wl, bl = (t.clone().requires_grad_() for t in (base, w, b))
        x = xb.to(low).transpose(1, 2)
        if layout == 'contiguous':
            x = x.contiguous()
        with torch.autocast('cuda', dtype=low, enabled=dtype != 'fp32'):
            out = causal_conv1d(x, wl, bl, 'silu')
        (out.float() * torch.linspace(-1, 1, out.numel(), device='cuda')
         .view(out.shape)).sum().backward()
        results[backend] = [out, xb.grad, wl.grad, bl.grad]
    for name, a, b_ in zip(('out', 'dx', 'dweight', 'dbias'),
                           results['cuda'], results['torch']):
        _close(a, b_, TOL[dtype], f'{layout} {dtype} {name}')
