"""What a bug report needs to know about this machine, for mmvim.

    python -m mmvim.env

prints the versions of the stack (torch, mmengine, mmcv and whether its
compiled ops import, mmseg, mmdet, mamba-ssm, causal-conv1d, triton, and the
deploy extra's onnx, onnxscript, onnxruntime, and mmvim's onnxruntime
custom-op library), CUDA and the
devices, and for every op of :mod:`mmvim.ops` which backends are usable here
and, for each one that is not, why and how to get it, and which backend
``auto`` picks for CPU and for CUDA tensors, and why. The op table is
:data:`mmvim.ops.dispatch.KERNELS`, so a kernel registered there appears
here without changes. ``tools/train.py`` and ``tools/test.py`` log the same
lines next to mmengine's environment block (:class:`mmvim.engine.MMVimRunner`).
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os.path as osp
from typing import Dict, List, Optional, Tuple

from .ops import dispatch

__all__ = ['collect_env', 'op_backends', 'env_report']

#: (distribution, module): the module is imported only when that is cheap
#: and safe; mamba-ssm and causal-conv1d fail to import without CUDA, so
#: their version is read from the installed metadata (triton's too: the
#: import takes seconds)
STACK = (('torch', 'torch'), ('mmengine', 'mmengine'), ('mmcv', 'mmcv'),
         ('mmsegmentation', 'mmseg'), ('mmdet', 'mmdet'),
         ('mamba-ssm', None), ('causal-conv1d', None), ('triton', None),
         # the deploy extra (ONNX export, onnxruntime; docs/deploy.md)
         ('onnx', None), ('onnxscript', None), ('onnxruntime', None))


def _version(dist: str, module: Optional[str]) -> str:
    if module is not None:
        try:
            return importlib.import_module(module).__version__
        except Exception as exc:
            return f'not importable ({type(exc).__name__}: {exc})'
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return 'not installed'


def _mmcv_ops() -> str:
    try:
        importlib.import_module('mmcv.ops')
        return 'compiled ops import'
    except Exception as exc:
        return (f'NO compiled ops ({type(exc).__name__}: {exc}); mmseg / '
                'mmdet need them: install full mmcv==2.1.0 with '
                'MMCV_WITH_OPS=1 (make install does)')


def _cpu_isa(module: str) -> str:
    """' (avx512 kernels; this CPU runs ...)' for mmvim's compiled CPU scan
    (``module``), '' for any other kernel."""
    if module != 'mmvim.ops.selective_scan_cpu':
        return ''
    try:
        from .ops.selective_scan_cpu import ISA_ENV, isa_info
        info = isa_info()
    except Exception:  # the kernel row already says why it does not import
        return ''
    forced = f'{ISA_ENV}={info["forced"]}' if info['forced'] else \
        f'{ISA_ENV} forces another'
    return (f' ({info["active"]} kernels; this CPU runs '
            f'{", ".join(info["supported"])}; {forced})')


def _ort_library() -> str:
    """Where mmvim's onnxruntime custom-op library is (docs/deploy.md)."""
    from .deploy.ort_ops import LIBRARY_HINT, library_path
    path = library_path()
    return (f'mmvim custom-op library {path}' if path else
            f'mmvim custom-op library NOT built (--scan-op mmvim files need '
            f'it: {LIBRARY_HINT})')


def collect_env() -> Dict[str, str]:
    """{what: value}, in print order: mmvim, the stack, CUDA, devices."""
    import torch

    from . import __version__
    env = {'mmvim': f'{__version__} ({osp.dirname(osp.abspath(__file__))})'}
    for dist, module in STACK:
        env[dist] = _version(dist, module)
    env['mmcv'] += f', {_mmcv_ops()}'
    env['onnxruntime'] += f'; {_ort_library()}'
    env['torch'] += f' (built with CUDA {torch.version.cuda})' \
        if torch.version.cuda else ' (CPU build)'
    env['CUDA available'] = str(torch.cuda.is_available())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            env[f'GPU {i}'] = (f'{torch.cuda.get_device_name(i)} '
                               f'(sm_{major}{minor})')
    return env


def op_backends(cuda_available: Optional[bool] = None
                ) -> Dict[str, List[Tuple[str, bool, str]]]:
    """{op: [(backend, usable, note), ...]} for every op of
    :data:`~mmvim.ops.dispatch.KERNELS`, backends in the order
    cuda, triton, cpu, torch. ``note`` says what runs, or why the backend
    cannot be used here and the fix."""
    if cuda_available is None:
        import torch
        cuda_available = torch.cuda.is_available()
    report = {}
    for op, kernels in dispatch.KERNELS.items():
        rows = []
        for backend in dispatch.KERNEL_BACKENDS:
            kern = kernels.get(backend)
            if kern is None:
                rows.append((backend, False,
                             f'mmvim has no {backend} kernel for {op}'))
            elif kern.error is not None:
                rows.append((backend, False,
                             f'{kern.module} does not import ({kern.error}). '
                             f'Fix: {kern.install_hint}'))
            elif backend in ('cuda', 'triton') and not cuda_available:
                note = (f'{kern.module} imports, but there is no CUDA '
                        'device here')
                if backend == 'triton':
                    note += ('; on CPU tensors it runs only under '
                             'TRITON_INTERPRET=1 (tests)')
                rows.append((backend, False, note))
            else:
                rows.append((backend, True, f'{kern.module}.{kern.attr}'
                             + _cpu_isa(kern.module)))
        rows.append(('torch', True, 'PyTorch implementation in mmvim.ops '
                     '(any device)'))
        report[op] = rows
    return report


def env_report() -> str:
    """The whole report, as printed by ``python -m mmvim.env``."""
    env = collect_env()
    width = max(map(len, env))
    lines = ['mmvim environment'] + [f'  {k:<{width}}  {v}'
                                     for k, v in env.items()]
    try:
        requested = dispatch.requested_backend()
    except ValueError as exc:
        requested = f'invalid ({exc})'
    lines.append(f'ops ({dispatch.BACKEND_ENV}={requested}):')
    cuda = env['CUDA available'] == 'True'
    for op, rows in op_backends(cuda).items():
        usable = [b for b, ok, _ in rows if ok]
        # what auto picks for tensors of each device, from what imports
        # (for CUDA tensors also on a machine without a GPU)
        auto = {device: dispatch.auto_backend(op, device)
                for device in ('cpu', 'cuda')}
        lines.append(f'  {op}: usable backends: {", ".join(usable)} (auto: '
                     f'CPU tensors -> {auto["cpu"][0]}, CUDA tensors -> '
                     f'{auto["cuda"][0]})')
        for device, (backend, why) in auto.items():
            lines.append(f'    auto on {device.upper()} tensors -> '
                         f'{backend}: {why}')
        for backend, ok, note in rows:
            mark = 'yes' if ok else 'no '
            lines.append(f'    {backend:<6} {mark}  {note}')
    return '\n'.join(lines)


def main() -> None:
    print(env_report())


if __name__ == '__main__':
    main()
