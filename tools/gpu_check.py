"""The first command to run on a GPU machine: kernels, parity, every
backbone and config, and speed against the papers' numbers.

    python tools/gpu_check.py                        # all phases (GPU)
    python tools/gpu_check.py --phases setup parity  # some of them
    python tools/gpu_check.py --device cpu --tiny    # CPU smoke run (CI)

Phases (each runs even if an earlier one failed; a phase that needs what
is missing says so):

setup        versions of torch / CUDA / GPU / the OpenMMLab stack / the
             kernels; if mamba-ssm or causal-conv1d does not import, builds
             it from the pinned sdists in .cache/kernel-sdists (fetched there
             by pip where PyPI is reachable; carry the folder to an offline
             machine), for this GPU's architecture only, and installs it
             into this Python. ``--wheel-dir DIR`` installs a missing
             OpenMMLab stack from carried wheels (mmcv from its sdist).
             The documented install is ``MMVIM_EXTRAS=dev,cuda make install``.
parity       ``pytest -m gpu tests/``: CUDA kernels vs the torch backend at
             every contract and model shape, fp32 / fp16 / bf16.
backbones    every preset backbone, forward + backward under AMP with the
             ``cuda`` and the ``torch`` backend from the same weights:
             largest relative difference of outputs and of gradients.
train        one training iteration (``model.train_step``: preprocessor,
             loss, backward, optimizer step; AMP where the config's optim
             wrapper is AmpOptimWrapper) of every config in configs/ at its
             crop size and per-GPU batch on random data: time, peak memory.
triton       mmvim's Triton kernels: the selective_scan / causal_conv1d
             calls of Vim-S, VMamba-T and MambaVision-T at 512 and 1024
             (captured from one forward, batch of their UperNet config),
             forward and forward + backward with the triton, cuda
             (mamba-ssm) and torch backends: times, triton vs torch
             difference, triton / cuda time (target <= 1.3x at the Vim
             shapes); one training iteration of every UperNet config with
             MMVIM_SCAN_BACKEND=triton; on a GPU the triton tests
             (tests/test_*_triton.py, MMVIM_TRITON_AUTOTUNE=0) on the
             device. ``--device cpu`` runs the kernels in Triton's
             interpreter (TRITON_INTERPRET=1).
vim_vs_deit  Vim-Ti vs DeiT-Ti backbones, feature extraction (no grad,
             fp32) at 512 / 1024 / 1248: FPS ratio and memory saving at
             1248 against the Vim paper's 2.8x and 86.8%.
throughput   VMamba-T and MambaVision-T backbones at 224, batch 128, as
             their repos measure (VMamba fp32, MambaVision AMP), against
             1686 and 6298 img/s (A100, with the classifier head).

Writes JSON (default docs/benchmarks/gpu_check_<device>.json) and prints
a table. ``--device cpu`` runs the same code on CPU (the ``cpu`` backend
against ``torch``, bf16 autocast, no build); ``--tiny`` shrinks every size
so that a CPU run takes about a minute.
"""
import argparse
import glob
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PHASES = ('setup', 'parity', 'backbones', 'train', 'triton', 'vim_vs_deit',
          'throughput')
STACK = ('mmengine', 'mmcv', 'mmdet', 'mmsegmentation')
BACKBONES = ('vim_t', 'vim_s', 'vim_b', 'vmamba_t', 'vmamba_s', 'vmamba_b',
             'mambavision_t', 'mambavision_s', 'mambavision_b')
# --tiny: one small model per family
TINY_BACKBONES = {
    'vim_t': dict(depth=2, embed_dims=32, out_indices=(0, 1)),
    'vmamba_t': dict(dims=16, depths=(1, 1, 1, 1)),
    'mambavision_t': dict(dim=16, in_dim=8, depths=(1, 1, 3, 2),
                          num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2)),
}
# The papers' anchors (docs/benchmarks.md, /work/shared/anchors)
VIM_PAPER = dict(size=1248, fps_ratio=2.8, memory_saving=0.868)
OFFICIAL_TP = {  # img/s at 224, batch 128, one A100, with classifier
    'vmamba_t': dict(images_per_s=1686, amp=False, warmup=50, timed=30),
    'mambavision_t': dict(images_per_s=6298, amp=True, warmup=10, timed=30),
}
TOL = dict(output=5e-2, grad=1e-1)  # backbones phase, AMP, relative to max
# triton phase: the block shapes of these backbones at these sizes (batch:
# their UperNet config's per-GPU batch), fp32 triton vs torch to TRITON_TOL
# of the largest entry; target: fwd+bwd within TRITON_TARGET x mamba-ssm's
# kernel at the Vim shapes
TRITON_SIZES = (512, 1024)
UPERNET_OF = {'vim_s': 'upernet_vim_s_ade20k.py',
              'vmamba_t': 'upernet_vmamba_t_ade20k.py',
              'mambavision_t': 'upernet_mambavision_t_ade20k.py'}
TRITON_TOL = 1e-4
TRITON_TARGET = 1.3
TRITON_TESTS = ('tests/test_selective_scan_triton.py',
                'tests/test_causal_conv1d_triton.py')


def _load(relpath):
    """A module of mmvim that imports nothing from mmvim, loaded from its
    file: importing the ``mmvim`` package needs the OpenMMLab stack, which
    the setup phase may still have to install."""
    import importlib.util
    name = '_gpu_check_' + os.path.basename(relpath)[:-3]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(ROOT, relpath))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def kernel_sdists():
    return _load('mmvim/utils/kernel_sdists.py')


# --------------------------------------------------------------------------
# setup
# --------------------------------------------------------------------------
def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _python_ok(code, timeout=300):
    """(ok, last line of stderr) of ``python -c code`` in a fresh process
    (an import that fails half-way leaves nothing behind here)."""
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode == 0, (lines[-1] if lines else '')


def probe():
    """What is installed and importable, without importing it here."""
    import torch
    info = dict(python=sys.version.split()[0], torch=torch.__version__,
                torch_cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available())
    if info['cuda_available']:
        info['gpu'] = torch.cuda.get_device_name()
        info['capability'] = list(torch.cuda.get_device_capability())
    try:
        out = subprocess.run(['nvcc', '--version'], capture_output=True,
                             text=True).stdout
        info['nvcc'] = out.strip().splitlines()[-1] if out else None
    except OSError:
        info['nvcc'] = None
    info['versions'] = {d: _version(d) for d in STACK + (
        'mamba-ssm', 'causal-conv1d', 'triton', 'einops')}
    SDISTS = kernel_sdists().SDISTS
    info['kernels'] = {}
    for pkg, pin in SDISTS.items():
        ok, err = _python_ok(f'import torch, {pin["module"]}')
        info['kernels'][pkg] = None if ok else (err or 'import failed')
    ok, err = _python_ok('import mmvim')
    info['mmvim_import'] = None if ok else err
    return info


def plan_setup(info, no_build=False, wheel_dir=None):
    """The setup actions for what :func:`probe` found: a list of
    (action, what, detail) with action 'build' (a kernel from its sdist),
    'install-stack' (mmengine/mmcv/mmdet/mmseg from ``wheel_dir``) or
    'missing' (cannot be fixed here; detail says how)."""
    SDISTS, sdist_path = kernel_sdists().SDISTS, kernel_sdists().sdist_path
    actions = []
    if info['mmvim_import'] is not None:
        if wheel_dir:
            actions.append(('install-stack', 'openmmlab', wheel_dir))
        else:
            actions.append(('missing', 'openmmlab', (
                f'import mmvim fails ({info["mmvim_import"]}): install the '
                'stack (MMVIM_EXTRAS=dev,cuda make install, or offline '
                '--wheel-dir with carried wheels, docs/benchmarks.md § GPU)')))
    for pkg, pin in SDISTS.items():
        if info['kernels'][pkg] is None:
            continue
        if not info['cuda_available']:
            actions.append(('missing', pin['dist'], 'no CUDA device: '
                            'the kernel is not built on this machine'))
        elif no_build:
            actions.append(('missing', pin['dist'], '--no-build'))
        else:
            actions.append(('build', pkg, str(sdist_path(pkg))))
    return actions


def _run_logged(cmd, env, log_path):
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, **env), cwd=ROOT)
    if proc.returncode:
        with open(log_path) as f:
            tail = f.read().strip().splitlines()[-15:]
        raise RuntimeError(f'{" ".join(cmd)} failed (log {log_path}):\n'
                           + '\n'.join(tail))
    return time.time() - start


def run_setup(args, out_dir):
    build_command = kernel_sdists().build_command
    prepare_build = kernel_sdists().prepare_build
    info = probe()
    actions = plan_setup(info, args.no_build, args.wheel_dir)
    done = []
    jobs = str(os.cpu_count() or 4)
    for action, what, detail in actions:
        if action == 'install-stack':
            cap = info.get('capability', [9, 0])
            cmd = [sys.executable, '-m', 'pip', 'install', '--no-index',
                   '--find-links', detail, '--no-build-isolation',
                   'mmengine==0.10.7', 'mmcv==2.1.0', 'mmdet==3.3.0',
                   'mmsegmentation==1.2.2', 'ftfy', 'regex']
            env = dict(MMCV_WITH_OPS='1', FORCE_CUDA='1', MAX_JOBS=jobs,
                       TORCH_CUDA_ARCH_LIST=f'{cap[0]}.{cap[1]}')
            secs = _run_logged(cmd, env, os.path.join(out_dir,
                                                      'setup_stack.log'))
            done.append(dict(action=action, what=what, seconds=secs))
        elif action == 'build':
            cap = tuple(info['capability'])
            with tempfile.TemporaryDirectory() as work:
                source = prepare_build(what, cap, Path(work))
                cmd, env = build_command(what, source, cap, int(jobs))
                secs = _run_logged(cmd, env, os.path.join(
                    out_dir, f'setup_build_{what}.log'))
            done.append(dict(action=action, what=what, seconds=secs,
                             arch=f'sm_{cap[0]}{cap[1]}'))
    after = probe() if done else info
    missing = [dict(what=w, why=d) for a, w, d in actions if a == 'missing']
    kernels_ok = all(v is None for v in after['kernels'].values()) \
        or not after['cuda_available']  # CPU: no kernels expected
    status = 'ok' if after['mmvim_import'] is None and kernels_ok \
        else 'incomplete'
    return dict(status=status, before=info, after=after, done=done,
                missing=missing)


# --------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------
def _pytest(tests, xml, marks, env=None):
    """Run pytest on ``tests`` in a fresh process: counts from the junit
    report, the failed tests, a status (ok / failed / skipped)."""
    import xml.etree.ElementTree as ET
    cmd = [sys.executable, '-m', 'pytest', *marks, '-q', '-p',
           'no:cacheprovider', f'--junitxml={xml}'] + list(tests)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})))
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    if os.path.exists(xml):
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
        counts = {k: int(suite.get(k, 0)) for k in counts}
    failed = [line for line in proc.stdout.splitlines()
              if line.startswith(('FAILED', 'ERROR'))]
    passed = counts['tests'] - counts['failures'] - counts['errors'] \
        - counts['skipped']
    status = ('failed' if failed or proc.returncode not in (0, 5)
              else 'ok' if passed else 'skipped')
    return dict(status=status, passed=passed, command=' '.join(cmd),
                failed_tests=failed[:50], **counts)


def run_parity(args, out_dir):
    return _pytest(args.parity_tests, os.path.join(out_dir,
                                                   'parity_junit.xml'),
                   ['-m', 'gpu'])


# --------------------------------------------------------------------------
# backbones: cuda (cpu) backend vs torch backend
# --------------------------------------------------------------------------
def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _fwd_bwd(model, x, backend, device, amp_dtype):
    import torch
    os.environ['MMVIM_SCAN_BACKEND'] = backend
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autocast(device.split(':')[0], dtype=amp_dtype):
        outs = model(x)
    sum(o.float().mean() for o in outs).backward()
    return ([o.detach() for o in outs],
            {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None})


def run_backbones(args, out_dir):
    import torch

    from mmvim.utils.presets import build_preset
    device = args.device
    kernel = 'cuda' if device.startswith('cuda') else 'cpu'
    amp_dtype = torch.float16 if kernel == 'cuda' else torch.bfloat16
    names = list(TINY_BACKBONES) if args.tiny else list(BACKBONES)
    size = 64 if args.tiny else 224
    rows, saved = [], os.environ.get('MMVIM_SCAN_BACKEND')
    try:
        for name in names:
            row = dict(model=name, img_size=size, batch_size=2,
                       backends=[kernel, 'torch'])
            try:
                torch.manual_seed(0)
                model = build_preset(name, img_size=size, **(
                    TINY_BACKBONES[name] if args.tiny else {}))
                model = model.to(device).eval()  # no drop path: same draws
                x = torch.randn(2, 3, size, size, device=device)
                ref = _fwd_bwd(model, x, 'torch', device, amp_dtype)
                got = _fwd_bwd(model, x, kernel, device, amp_dtype)
                row['output_rel_diff'] = max(_rel(a, b) for a, b in
                                             zip(got[0], ref[0]))
                row['grad_rel_diff'] = max(_rel(got[1][n], ref[1][n])
                                           for n in ref[1])
                row['status'] = 'ok' if (
                    row['output_rel_diff'] < TOL['output']
                    and row['grad_rel_diff'] < TOL['grad']) else 'mismatch'
            except Exception as exc:  # noqa: BLE001  (reported per model)
                row.update(status='error', error=_err(exc))
            rows.append(row)
            print(f'  backbones {name}: {row["status"]}', flush=True)
    finally:
        if saved is None:
            os.environ.pop('MMVIM_SCAN_BACKEND', None)
        else:
            os.environ['MMVIM_SCAN_BACKEND'] = saved
    return dict(status=_worst(rows), amp_dtype=str(amp_dtype),
                tolerance=TOL, results=rows)


# --------------------------------------------------------------------------
# train: one iteration of every config
# --------------------------------------------------------------------------
def train_size(cfg):
    """(h, w) a training batch has: the seg crop, the detector's fixed pad
    (ViTDet) or its largest resize scale (keep_ratio, (w, h) in mmdet)
    rounded up to the preprocessor's pad_size_divisor."""
    if cfg.get('crop_size'):
        return tuple(cfg.crop_size)
    pre = cfg.model.get('data_preprocessor', {})
    for aug in pre.get('batch_augments') or []:
        if aug.get('size'):
            return tuple(aug['size'])
    ds = cfg.train_dataloader.dataset
    while 'pipeline' not in ds and 'dataset' in ds:
        ds = ds.dataset
    scales = []
    for t in ds.get('pipeline', []):
        for key in ('scale', 'scales'):
            val = t.get(key)
            if val is None:
                continue
            vals = val if isinstance(val[0], (list, tuple)) else [val]
            scales += [tuple(v) for v in vals]
        for sub in t.get('transforms', []):  # RandomChoice branches
            for tt in (sub if isinstance(sub, list) else [sub]):
                if tt.get('scales') or tt.get('scale'):
                    v = tt.get('scales') or [tt.get('scale')]
                    scales += [tuple(s) for s in (
                        v if isinstance(v[0], (list, tuple)) else [v])]
    if not scales:
        raise ValueError('no crop_size, batch pad or resize scale found')
    w, h = max(scales, key=lambda s: s[0] * s[1])
    h, w = min(h, w), max(h, w)
    div = pre.get('pad_size_divisor') or 1
    return (math.ceil(h / div) * div, math.ceil(w / div) * div)


def train_step(path, device, tiny, iters=2):
    """Training iterations of the config at ``path`` on random data (the
    last one timed; the first warms up): a result row (time, loss, peak
    memory)."""
    import torch
    from mmengine.optim import build_optim_wrapper

    from mmvim.utils import build_model, load_config
    from tools.benchmark import _det_samples, _seg_samples
    name = os.path.splitext(os.path.basename(path))[0]
    row = dict(config=name)
    try:
        cfg = load_config(path)
        h, w = (64, 64) if tiny else train_size(cfg)
        # BN (SyncBN on one process) needs 2 images for the decode
        # head's 1x1 pooled branch: configs of 1 image per GPU run 2
        batch = max(2, 1 if tiny else cfg.train_dataloader.batch_size)
        row['config_batch_size'] = cfg.train_dataloader.batch_size
        wrapper_cfg = cfg.optim_wrapper.copy()
        amp = wrapper_cfg.get('type') == 'AmpOptimWrapper'
        if amp and not device.startswith('cuda'):
            wrapper_cfg['type'], amp = 'OptimWrapper', False  # CUDA only
            wrapper_cfg.pop('loss_scale', None)
            wrapper_cfg.pop('dtype', None)
        row.update(img_size=[h, w], batch_size=batch, amp=amp)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        wrapper = build_optim_wrapper(model, wrapper_cfg)
        if cfg.get('default_scope') == 'mmdet':
            samples = _det_samples(batch, (h, w))
        else:
            samples = _seg_samples(
                batch, (h, w), cfg.model.decode_head.num_classes)
        data = dict(inputs=[torch.randint(0, 256, (3, h, w),
                                          dtype=torch.uint8)
                            for _ in range(batch)], data_samples=samples)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):  # the first warms up (cudnn, allocator)
            start = time.perf_counter()
            losses = model.train_step(data, wrapper)
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        loss = sum(float(v.detach()) if hasattr(v, 'detach') else
                   float(v) for k, v in losses.items() if 'loss' in k)
        row.update(seconds=times[-1], first_seconds=times[0],
                   loss=loss, status='ok' if math.isfinite(loss)
                   else 'non-finite loss')
        if device.startswith('cuda'):
            row['peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
        del model, wrapper
        if device.startswith('cuda'):
            torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001  (reported per config)
        row.update(status='error', error=_err(exc))
    return row


def run_train(args, out_dir):
    configs = args.configs or sorted(
        c for c in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
        if not os.path.basename(c).startswith('demo_'))
    rows = []
    for path in configs:
        row = train_step(path, args.device, args.tiny)
        rows.append(row)
        print(f'  train {row["config"]}: {row["status"]}', flush=True)
    return dict(status=_worst(rows), results=rows)


# --------------------------------------------------------------------------
# triton: mmvim's Triton kernels against mamba-ssm's CUDA ones and torch
# --------------------------------------------------------------------------
class _Capture:
    """Records the arguments of every selective_scan / causal_conv1d call
    the models make (the first call of each distinct signature), by
    wrapping the names the model layers imported."""

    def __init__(self):
        self.calls = {}

    @staticmethod
    def signature(op, args, kwargs):
        def sig(v):
            if hasattr(v, 'shape'):
                return (tuple(v.shape), str(v.dtype))
            return v
        return (op, tuple(sig(a) for a in args),
                tuple(sorted((k, sig(v)) for k, v in kwargs.items())))

    def wrap(self, op, fn):
        def recorder(*args, **kwargs):
            key = self.signature(op, args, kwargs)
            if key not in self.calls:
                self.calls[key] = (op, [
                    a.detach().clone() if hasattr(a, 'detach') else a
                    for a in args], {
                    k: v.detach().clone() if hasattr(v, 'detach') else v
                    for k, v in kwargs.items()})
            return fn(*args, **kwargs)
        return recorder

    def __enter__(self):
        import mmvim.ops as ops
        self.patched = []
        for name, mod in list(sys.modules.items()):
            if not name.startswith('mmvim.models'):
                continue
            for op in ('selective_scan', 'causal_conv1d'):
                if getattr(mod, op, None) is getattr(ops, op):
                    self.patched.append((mod, op))
                    setattr(mod, op, self.wrap(op, getattr(ops, op)))
        return self

    def __exit__(self, *exc):
        import mmvim.ops as ops
        for mod, op in self.patched:
            setattr(mod, op, getattr(ops, op))


def capture_kernel_calls(preset, size, batch, device, tiny):
    """The distinct selective_scan / causal_conv1d calls of one forward of
    backbone ``preset`` on a (batch, 3, size, size) image: a list of
    (op, args, kwargs) with the models' own tensors."""
    import torch

    from mmvim.utils.presets import build_preset
    torch.manual_seed(0)
    model = build_preset(preset, img_size=size, **(
        TINY_BACKBONES.get(preset, {}) if tiny else {})).to(device).eval()
    with _Capture() as cap, torch.no_grad():
        model(torch.randn(batch, 3, size, size, device=device))
    del model
    return list(cap.calls.values())


def _describe(op, args, kwargs):
    """Shape facts of a captured call, for the report."""
    if op == 'causal_conv1d':
        return dict(op=op, x=list(args[0].shape), width=args[1].shape[1])
    u, B, C = args[0], args[3], args[4]

    def kind(m):
        return ('const' if m.dim() == 2 else 'var' if m.dim() == 3
                else f'group{m.shape[1]}')
    rev = kwargs.get('reverse')
    z = args[6] if len(args) > 6 else kwargs.get('z')
    return dict(op=op, batch=u.shape[0], dim=u.shape[1],
                d_state=args[2].shape[1], L=u.shape[2], B=kind(B), C=kind(C),
                z=z is not None,
                reverse=None if rev is None else [bool(r) for r in rev])


def _time_call(op, args, kwargs, backend, device, repeats, backward):
    """Median seconds of one call (forward, or forward + backward of a
    fixed random gradient) with MMVIM_SCAN_BACKEND=backend, and the
    outputs / gradients of the last call."""
    import torch

    import mmvim.ops as ops
    from mmvim.utils.bench import measure
    os.environ['MMVIM_SCAN_BACKEND'] = backend
    fn = getattr(ops, op)
    def leaf(a):  # a fresh leaf tensor (needing grad when timed so)
        return a.detach().clone().requires_grad_(
            backward and a.is_floating_point()) if hasattr(a, 'detach') \
            else a
    leaves = [leaf(a) for a in args]
    kw = {k: leaf(v) for k, v in kwargs.items()}
    tensors = [t for t in leaves + list(kw.values())
               if hasattr(t, 'requires_grad') and t.requires_grad]
    result = {}

    def call():
        for t in tensors:
            t.grad = None
        if not backward:
            with torch.no_grad():
                result['out'] = fn(*leaves, **kw)
            return
        out = fn(*leaves, **kw)
        if 'dout' not in result:  # drawn once, outside the timed calls
            result['dout'] = torch.randn(
                out.shape, generator=torch.Generator(
                    device=out.device).manual_seed(0), device=out.device,
                dtype=out.dtype)
        out.backward(result['dout'])
        result['out'] = out.detach()
        result['grads'] = [t.grad for t in tensors]
    res = measure(call, repeats, device)
    return res['median_s'], res['peak_extra_mb'], result


def run_triton(args, out_dir):
    """Triton vs cuda vs torch on the models' own scan / conv calls, forward
    and forward + backward; one training step of each UperNet config with
    the triton backend; on a GPU also the triton tests on the device."""
    import torch
    device = args.device
    saved = os.environ.get('MMVIM_SCAN_BACKEND')
    from mmvim.ops import dispatch
    backends = ['triton', 'cuda', 'torch'] if device.startswith('cuda') \
        else ['triton', 'torch']
    missing = dispatch.kernel_status('triton')['selective_scan']
    if missing is not None:
        return dict(status='skipped', reason=f'triton kernels unavailable: '
                    f'{missing}')
    if device == 'cpu':
        from mmvim.ops import _triton_utils
        if not _triton_utils.INTERPRET:
            return dict(status='skipped', reason='the triton kernels were '
                        'loaded without TRITON_INTERPRET=1: they cannot run '
                        'on CPU tensors in this process')
    models = {'vim_s': 'vim_t', 'vmamba_t': 'vmamba_t',
              'mambavision_t': 'mambavision_t'}
    sizes = [64] if args.tiny else list(TRITON_SIZES)
    rows = []
    try:
        for preset, tiny_preset in models.items():
            name = tiny_preset if args.tiny else preset
            batch = 1 if args.tiny else _config_batch(preset)
            for size in sizes:
                calls = capture_kernel_calls(name, size, batch, device,
                                             args.tiny)
                if args.tiny:  # the interpreter: one call of each op
                    calls = list({op: (op, a, kw) for op, a, kw
                                  in reversed(calls)}.values())
                for op, a, kw in calls:
                    row = dict(model=preset, img_size=size,
                               **_describe(op, a, kw))
                    ref = None
                    for backend in backends:
                        entry = {}
                        why = None if backend == 'torch' else \
                            dispatch.kernel_status(backend).get(op)
                        if why is not None:
                            entry['error'] = why
                        else:
                            try:
                                fwd, _, _ = _time_call(
                                    op, a, kw, backend, device,
                                    1 if args.tiny else args.repeats, False)
                                both, peak, res = _time_call(
                                    op, a, kw, backend, device,
                                    1 if args.tiny else args.repeats, True)
                                entry.update(fwd_ms=fwd * 1e3,
                                             fwd_bwd_ms=both * 1e3,
                                             fwd_bwd_peak_mb=peak)
                                if backend == 'torch':
                                    ref = res
                                else:
                                    entry['_res'] = res
                            except Exception as exc:  # noqa: BLE001
                                entry['error'] = _err(exc)
                        row[backend] = entry
                    for backend in backends:
                        res = row[backend].pop('_res', None)
                        if res is not None and ref is not None:
                            row[backend]['rel_diff_vs_torch'] = max(
                                _rel(x, y) for x, y in zip(
                                    [res['out']] + res['grads'],
                                    [ref['out']] + ref['grads']))
                    tri, cu = row['triton'], row.get('cuda', {})
                    if 'fwd_bwd_ms' in tri and 'fwd_bwd_ms' in cu:
                        row['triton_over_cuda_fwd_bwd'] = \
                            tri['fwd_bwd_ms'] / cu['fwd_bwd_ms']
                    row['status'] = 'ok' if 'error' not in tri and tri.get(
                        'rel_diff_vs_torch', 1.0) < TRITON_TOL else (
                        'error' if 'error' in tri else 'mismatch')
                    rows.append(row)
                    print(f'  triton {preset} {size} {op}: {row["status"]}',
                          flush=True)
                    if device.startswith('cuda'):
                        torch.cuda.empty_cache()
    finally:
        if saved is None:
            os.environ.pop('MMVIM_SCAN_BACKEND', None)
        else:
            os.environ['MMVIM_SCAN_BACKEND'] = saved
    result = dict(kernels=rows, tolerance=TRITON_TOL,
                  target=dict(triton_over_cuda_fwd_bwd=TRITON_TARGET,
                              at='Vim-S selective_scan calls'))
    vim = [r['triton_over_cuda_fwd_bwd'] for r in rows
           if r['model'] == 'vim_s' and r['op'] == 'selective_scan'
           and 'triton_over_cuda_fwd_bwd' in r]
    if vim:
        result['vim_triton_over_cuda_fwd_bwd'] = max(vim)
    # one training step of every UperNet config on the triton backend
    os.environ['MMVIM_SCAN_BACKEND'] = 'triton'
    try:
        configs = [c for c in (args.configs or sorted(glob.glob(
            os.path.join(ROOT, 'configs', 'upernet_*.py'))))
            if 'upernet' in os.path.basename(c)]
        train = []
        for path in configs:
            # --tiny (the interpreter on CPU): one iteration
            row = train_step(path, device, args.tiny, 1 if args.tiny else 2)
            train.append(row)
            print(f'  triton train {row["config"]}: {row["status"]}',
                  flush=True)
    finally:
        if saved is None:
            os.environ.pop('MMVIM_SCAN_BACKEND', None)
        else:
            os.environ['MMVIM_SCAN_BACKEND'] = saved
    result['train'] = train
    if device.startswith('cuda'):
        result['tests'] = _pytest(TRITON_TESTS, os.path.join(
            out_dir, 'triton_junit.xml'), [],
            env=dict(MMVIM_TRITON_AUTOTUNE='0'))
    else:
        result['tests'] = dict(status='skipped', note='on CPU the test suite '
                               'runs them under the interpreter')
    result['status'] = 'ok' if (
        _worst(rows) == 'ok' and _worst(train) == 'ok'
        and result['tests']['status'] in ('ok', 'skipped')) else 'failed'
    return result


def _config_batch(preset):
    """Per-GPU training batch of the preset's UperNet config."""
    from mmvim.utils import load_config
    cfg = load_config(os.path.join(ROOT, 'configs', UPERNET_OF[preset]))
    return cfg.train_dataloader.batch_size


# --------------------------------------------------------------------------
# speed: the papers' settings, through tools/benchmark.py's run_case
# --------------------------------------------------------------------------
def _bench(target, size, batch, device, amp, repeats):
    from mmvim.utils.bench import spawn
    return spawn('tools.benchmark', 'run_case', target, size, batch, 'fwd',
                 device, amp, None, repeats)


def run_vim_vs_deit(args, out_dir):
    sizes = [64] if args.tiny else [512, 1024, VIM_PAPER['size']]
    batch = 1 if args.tiny else args.vim_batch
    rows = []
    for size in sizes:
        for model in ('vim_t', 'deit_t'):
            res = _bench(model, size, batch, args.device, False,
                         1 if args.tiny else args.repeats)
            rows.append(dict(model=model, img_size=size, batch_size=batch,
                             **res))
            print(f'  vim_vs_deit {model} {size}: '
                  f'{res.get("images_per_s", res.get("error"))}', flush=True)
    top = max(sizes)
    by = {r['model']: r for r in rows if r['img_size'] == top}
    result = dict(results=rows, paper=VIM_PAPER, compared_at=top,
                  setting='backbone features (4 maps), no grad, fp32, '
                  f'batch {batch}, median of {args.repeats} after a warm-up')
    if all('images_per_s' in by.get(m, {}) for m in ('vim_t', 'deit_t')):
        vim, deit = by['vim_t'], by['deit_t']
        result['fps_ratio'] = vim['images_per_s'] / deit['images_per_s']
        if deit['peak_extra_mb'] > 0:
            result['memory_saving'] = 1 - vim['peak_extra_mb'] \
                / deit['peak_extra_mb']
        result['status'] = 'ok'
    else:
        result['status'] = 'error'
    return result


def run_throughput(args, out_dir):
    rows = []
    for name, ref in OFFICIAL_TP.items():
        size, batch = (32, 2) if args.tiny else (224, 128)
        res = _bench(name, size, batch, args.device, ref['amp'],
                     1 if args.tiny else ref['timed'])
        row = dict(model=name, img_size=size, batch_size=batch,
                   amp=ref['amp'], official=ref, **res)
        if 'images_per_s' in res:
            row['ratio_to_official'] = res['images_per_s'] \
                / ref['images_per_s']
        rows.append(row)
        print(f'  throughput {name}: '
              f'{res.get("images_per_s", res.get("error"))}', flush=True)
    return dict(status=_worst(rows, ok=lambda r: 'images_per_s' in r),
                results=rows, note='mmvim presets are the dense backbones '
                '(four feature maps, no classifier head); the official '
                'numbers include the head')


# --------------------------------------------------------------------------
def _err(exc):
    return f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]


def _worst(rows, ok=lambda r: r.get('status') == 'ok'):
    if not rows:
        return 'skipped'
    return 'ok' if all(ok(r) for r in rows) else 'failed'


def _triton_summary(res):
    lines = []
    for r in res.get('kernels', []):
        times = ', '.join(
            f'{b} {r[b]["fwd_bwd_ms"]:.2f}' for b in ('triton', 'cuda',
                                                       'torch')
            if 'fwd_bwd_ms' in r.get(b, {}))
        diff = r['triton'].get('rel_diff_vs_torch')
        info = (f'fwd+bwd ms: {times}' if times else
                r['triton'].get('error', '')[:70])
        if diff is not None:
            info += f'; diff {diff:.1e}'
        lines.append((f'triton:{r["model"]}@{r["img_size"]}:{r["op"]}',
                      r['status'], info))
    if 'vim_triton_over_cuda_fwd_bwd' in res:
        lines.append(('triton:vim_vs_cuda', 'ok' if res[
            'vim_triton_over_cuda_fwd_bwd'] <= TRITON_TARGET else 'slow',
            f'{res["vim_triton_over_cuda_fwd_bwd"]:.2f}x mamba-ssm '
            f'(target <= {TRITON_TARGET}x)'))
    for r in res.get('train', []):
        info = r.get('error', '')[:70] or f'{r["seconds"]:.3f} s'
        lines.append((f'triton:train:{r["config"]}', r['status'], info))
    tests = res.get('tests', {})
    if tests:
        lines.append(('triton:tests', tests['status'],
                      tests.get('note') or f'{tests.get("passed", 0)} '
                      f'passed, {tests.get("failures", 0)} failed'))
    return lines


def summary_rows(report):
    """(phase, status, key numbers) lines of the final table."""
    lines = []
    for phase, res in report['phases'].items():
        status = res.get('status', '?')
        if phase == 'setup':
            after = res.get('after', {})
            vers = after.get('versions', {})
            ks = ', '.join(
                f'{k} {vers.get(k.replace("_", "-")) or "-"}: '
                f'{"ok" if v is None else "missing"}'
                for k, v in after.get('kernels', {}).items())
            lines.append((phase, status, f'{after.get("gpu", "no GPU")}; '
                          f'torch {after.get("torch")}; {ks}'))
        elif phase == 'parity':
            lines.append((phase, status, f'{res.get("passed", 0)} passed, '
                          f'{res.get("failures", 0)} failed, '
                          f'{res.get("skipped", 0)} skipped'))
        elif phase in ('backbones', 'train', 'throughput'):
            for r in res.get('results', []):
                key = r.get('model') or r.get('config')
                if 'error' in r:
                    info = r['error'][:70]
                elif phase == 'backbones':
                    info = (f'out {r["output_rel_diff"]:.2e}, grad '
                            f'{r["grad_rel_diff"]:.2e}')
                elif phase == 'train':
                    peak = r.get('peak_mb')
                    info = (f'{r["img_size"][0]}x{r["img_size"][1]} '
                            f'b{r["batch_size"]}{" amp" if r["amp"] else ""}'
                            f': {r["seconds"]:.3f} s'
                            + (f', {peak:.0f} MB' if peak else ''))
                else:
                    info = (f'{r["images_per_s"]:.0f} img/s '
                            f'({r["ratio_to_official"]:.2f}x official '
                            f'{r["official"]["images_per_s"]})')
                lines.append((f'{phase}:{key}', r.get('status', status),
                              info))
        elif phase == 'triton':
            lines += _triton_summary(res)
        elif phase == 'vim_vs_deit':
            info = 'no ratio'
            if 'fps_ratio' in res:
                info = (f'at {res["compared_at"]}: {res["fps_ratio"]:.2f}x '
                        f'FPS (paper {VIM_PAPER["fps_ratio"]}x)')
                if 'memory_saving' in res:
                    info += (f', {res["memory_saving"]:.1%} less memory '
                             f'(paper {VIM_PAPER["memory_saving"]:.1%})')
            lines.append((phase, status, info))
        if 'error' in res:  # the phase itself broke
            lines.append((phase, 'error', res['error'][:100]))
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda',
                        help='cuda (default) or cpu (smoke run)')
    parser.add_argument('--phases', nargs='+', default=list(PHASES),
                        choices=PHASES)
    parser.add_argument('--tiny', action='store_true',
                        help='tiny models and sizes (CPU smoke run)')
    parser.add_argument('--configs', nargs='+',
                        help='train phase: these configs (default: every '
                        'configs/*.py but the demos)')
    parser.add_argument('--parity-tests', nargs='+', default=['tests'],
                        help='what the parity phase hands pytest -m gpu')
    parser.add_argument('--vim-batch', type=int, default=16,
                        help='batch of the Vim vs DeiT timings')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--no-build', action='store_true',
                        help='setup: report missing kernels, build nothing')
    parser.add_argument('--wheel-dir',
                        help='setup: install a missing mmengine/mmcv/mmdet/'
                        'mmsegmentation from the wheels (and mmcv sdist) '
                        'in this folder, offline')
    parser.add_argument('--out', help='JSON path (default docs/benchmarks/'
                        'gpu_check_<device>.json)')
    parser.add_argument('--work-dir', default=os.path.join(
        ROOT, 'work_dirs', 'gpu_check'), help='build logs, pytest report')
    args = parser.parse_args(argv)
    if args.device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda but torch sees no CUDA device '
                         f'(torch {torch.__version__}); use --device cpu '
                         'for the smoke run')
    elif args.device != 'cpu':
        parser.error(f'--device must be cuda or cpu, got {args.device!r}')
    return args


RUNNERS = dict(setup=run_setup, parity=run_parity, backbones=run_backbones,
               train=run_train, triton=run_triton, vim_vs_deit=run_vim_vs_deit,
               throughput=run_throughput)


def main(argv=None):
    args = parse_args(argv)
    if args.device == 'cpu' and 'triton' in args.phases:
        # the Triton kernels run on CPU only under Triton's interpreter,
        # chosen when they are imported (later, by the triton phase)
        os.environ.setdefault('TRITON_INTERPRET', '1')
    environment = _load('mmvim/utils/bench.py').environment
    kind = args.device.split(':')[0]
    out = args.out or os.path.join(ROOT, 'docs', 'benchmarks',
                                   f'gpu_check_{kind}.json')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    report = dict(environment(args.device), tiny=args.tiny, phases={})
    start = time.time()
    for phase in [p for p in PHASES if p in args.phases]:
        print(f'[gpu_check] {phase} ...', flush=True)
        t0 = time.time()
        try:
            res = RUNNERS[phase](args, args.work_dir)
        except Exception as exc:  # noqa: BLE001  (the next phase still runs)
            res = dict(status='error', error=_err(exc),
                       traceback=traceback.format_exc()[-2000:])
        res['seconds'] = time.time() - t0
        report['phases'][phase] = res
        with open(out, 'w') as f:  # after every phase: partial results too
            json.dump(report, f, indent=1, default=str)
    report['seconds'] = time.time() - start
    with open(out, 'w') as f:
        json.dump(report, f, indent=1, default=str)
    rows = summary_rows(report)
    width = max(len(r[0]) for r in rows) + 2 if rows else 10
    print(f'\n{"check":<{width}}{"status":<12}result')
    for name, status, info in rows:
        print(f'{name:<{width}}{status:<12}{info}')
    print(f'\n{report["seconds"]:.0f} s; wrote {out}')
    failed = [p for p, r in report['phases'].items()
              if r.get('status') not in ('ok', 'skipped')]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
