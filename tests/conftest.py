import os

import pytest
import torch

# Backend selection is automatic in tests (CPU tensors -> torch backend);
# tests that need a specific backend set MMVIM_SCAN_BACKEND themselves.
os.environ['MMVIM_SCAN_BACKEND'] = 'auto'

# Under pytest-xdist (`make test` runs `-n 2`): share the cores between the
# workers, in this process and in the tools the tests start, instead of
# every worker's OpenMP pool spinning on all of them.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ.setdefault('OMP_NUM_THREADS', str(_THREADS))


def pytest_report_header(config):
    """Which instruction set the compiled CPU scan runs here (the kernel
    tests also run the other ones this CPU has; MMVIM_CPU_ISA forces one
    for the whole suite)."""
    try:
        from mmvim.ops.selective_scan_cpu import isa_info
    except Exception as exc:  # not built, or MMVIM_CPU_ISA not runnable
        return f'mmvim._ext (compiled CPU scan): unavailable ({exc})'
    info = isa_info()
    forced = f"MMVIM_CPU_ISA={info['forced']}" if info['forced'] else \
        'the widest this CPU runs; MMVIM_CPU_ISA unset'
    return (f"mmvim._ext (compiled CPU scan): {info['active']} kernels in "
            f"use ({forced}); this CPU runs {', '.join(info['supported'])}")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def train_and_test_one_iteration(cfg, scope, batch_fn):
    """Build ``cfg.model`` in ``scope`` ('mmseg' | 'mmdet'), run one
    optimiser step on ``batch_fn()`` (checking the losses are finite and the
    backbone's first mixer moved) and one test step on ``batch_fn(1)``;
    returns the test outputs."""
    import importlib

    from mmengine.optim import build_optim_wrapper

    import mmvim  # noqa: F401
    importlib.import_module(f'{scope}.utils').register_all_modules()
    registry = importlib.import_module(f'{scope}.registry').MODELS
    torch.manual_seed(0)
    model = registry.build(cfg.model)
    model.init_weights()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    weight = next(p for n, p in model.backbone.named_parameters()
                  if n.endswith('in_proj.weight'))  # the first mixer's
    before = weight.detach().clone()
    losses = model.train_step(batch_fn(), wrapper)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert not torch.equal(before, weight)
    model.eval()
    with torch.no_grad():
        return model.test_step(batch_fn(1))


@pytest.fixture
def one_iteration():
    return train_and_test_one_iteration


def check_pyramid_shapes(model, sizes, dim0: int) -> None:
    """A hierarchical backbone returns, for every (h, w) in ``sizes``, maps
    of dim0 * 2**i channels at ceil(h / 2**(i+2)) x ceil(w / 2**(i+2)) (each
    stride-2 conv rounds up), and rejects images with the wrong channels."""
    with torch.no_grad():
        for h, w in sizes:
            outs = model(torch.randn(1, 3, h, w))
            for i, o in enumerate(outs):
                sh, sw = h, w
                for _ in range(i + 2):
                    sh, sw = -(-sh // 2), -(-sw // 2)
                assert o.shape == (1, dim0 * 2 ** i, sh, sw), (h, w, i)
        with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
            model(torch.randn(1, 1, 32, 32))


@pytest.fixture
def pyramid_shapes():
    return check_pyramid_shapes
