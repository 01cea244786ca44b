"""Which implementation runs an mmvim op: the backend switch of ``mmvim.ops``.

Every op has a pure-PyTorch implementation (``torch``, always available)
and may have compiled kernels, registered here per op and per backend:

=======  ==============================================  ===============
backend  what                                            tensors
=======  ==============================================  ===============
cuda     mamba-ssm / causal-conv1d CUDA kernels          CUDA
triton   mmvim's Triton kernels (compiled at run time)   CUDA
cpu      mmvim's own C++ extension (``mmvim._ext``)      CPU
torch    the PyTorch implementation in ``mmvim.ops``     any
=======  ==============================================  ===============

``MMVIM_SCAN_BACKEND`` chooses: ``auto`` (default) takes the first kernel
for the tensors' device that imports (CUDA tensors: cuda, then triton; CPU
tensors: cpu) and falls back to torch with a one-time warning that says how
to get a kernel; ``cuda`` / ``triton`` / ``cpu`` force a kernel (an op with
no kernel of that kind runs its torch path, which is the compiled PyTorch op
already); ``torch`` forces the PyTorch path. ``triton`` runs CPU tensors
only under Triton's interpreter (``TRITON_INTERPRET=1``, for tests). Kernels
are imported lazily on first use, so ``import mmvim`` never fails because
one is missing (nor imports triton).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Tuple

from torch import Tensor

from ..utils.misc import warn_once

__all__ = ['BACKEND_ENV', 'BACKENDS', 'KERNEL_BACKENDS', 'AUTO_ORDER',
           'LazyKernel', 'KERNELS', 'register_kernel', 'requested_backend',
           'resolve_backend', 'auto_backend', 'kernel', 'kernel_status',
           'cuda_kernel_status', 'triton_interpreting']

BACKEND_ENV = 'MMVIM_SCAN_BACKEND'
BACKENDS = ('auto', 'torch', 'cpu', 'cuda', 'triton')
#: the kinds of compiled kernel an op may register
KERNEL_BACKENDS = ('cuda', 'triton', 'cpu')
#: what ``auto`` tries, in order, for tensors of each device type
AUTO_ORDER = {'cuda': ('cuda', 'triton'), 'cpu': ('cpu',)}


class LazyKernel:
    """An optional compiled function, imported on first use; the outcome
    (the function, or why it is unavailable) is remembered."""

    def __init__(self, module: str, attr: str, install_hint: str) -> None:
        self.module = module
        self.attr = attr
        self.install_hint = install_hint
        self._fn: Optional[Callable] = None
        self._error: Optional[str] = None
        self._tried = False

    def load(self) -> Optional[Callable]:
        if not self._tried:
            self._tried = True
            try:
                mod = __import__(self.module, fromlist=[self.attr])
                self._fn = getattr(mod, self.attr)
            except Exception as exc:  # ImportError, missing .so, triton, ...
                self._error = f'{type(exc).__name__}: {exc}'
        return self._fn

    @property
    def error(self) -> Optional[str]:
        """None when the kernel imports, otherwise why it does not."""
        self.load()
        return self._error


_CUDA_HINT = ("install the CUDA extras on a CUDA machine: "
              "MMVIM_EXTRAS=dev,cuda make install (builds {pkg} against the "
              "installed CUDA torch)")

_TRITON_HINT = ("install triton (CUDA builds of torch ship it; otherwise "
                "`pip install triton`, which `make install` does through the "
                "dev extra); nothing is compiled ahead of time")

_CPU_HINT = ("build mmvim's C++ extension mmvim._ext: run `make install` (or "
             "`python setup.py build_ext --inplace` in the repository) with a "
             "C++ compiler such as g++ installed; the install log says why "
             "the build was skipped")

# op -> backend ('cuda' | 'cpu') -> kernel
KERNELS: Dict[str, Dict[str, LazyKernel]] = {
    'selective_scan': {
        'cuda': LazyKernel('mamba_ssm.ops.selective_scan_interface',
                           'selective_scan_fn',
                           _CUDA_HINT.format(pkg='mamba-ssm')),
        'triton': LazyKernel('mmvim.ops.selective_scan_triton',
                             'selective_scan_triton', _TRITON_HINT),
        'cpu': LazyKernel('mmvim.ops.selective_scan_cpu',
                          'selective_scan_cpu', _CPU_HINT),
    },
    'causal_conv1d': {
        'cuda': LazyKernel('causal_conv1d', 'causal_conv1d_fn',
                           _CUDA_HINT.format(pkg='causal-conv1d')),
        'triton': LazyKernel('mmvim.ops.causal_conv1d_triton',
                             'causal_conv1d_triton', _TRITON_HINT),
    },
}


def register_kernel(op: str, backend: str, kern: LazyKernel) -> None:
    """Make ``kern`` the ``backend`` ('cuda', 'triton' or 'cpu') kernel of
    ``op``."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"a kernel's backend is one of "
                         f'{", ".join(KERNEL_BACKENDS)}, got {backend!r}')
    KERNELS.setdefault(op, {})[backend] = kern


def kernel(op: str, backend: str) -> Optional[LazyKernel]:
    """The registered ``backend`` kernel of ``op`` (None if it has none)."""
    return KERNELS.get(op, {}).get(backend)


def requested_backend() -> str:
    """The backend forced by ``MMVIM_SCAN_BACKEND`` ('auto' when unset)."""
    value = os.environ.get(BACKEND_ENV, 'auto').strip().lower() or 'auto'
    if value not in BACKENDS:
        raise ValueError(
            f'{BACKEND_ENV}={value!r} is not a valid backend; use one of '
            f'{", ".join(BACKENDS)} (or leave it unset for auto).')
    return value


def triton_interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): Triton
    kernels then run on CPU tensors, in numpy (slow; for tests)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _device(x: Tensor) -> Optional[str]:
    return 'cuda' if x.is_cuda else 'cpu' if x.device.type == 'cpu' \
        else None


def _auto_kernels(op: str, device: Optional[str]
                  ) -> List[Tuple[str, LazyKernel]]:
    """(backend, kernel) of ``op`` that ``auto`` tries, in
    :data:`AUTO_ORDER`, for tensors of ``device``."""
    kerns = ((b, kernel(op, b)) for b in AUTO_ORDER.get(device, ()))
    return [(b, k) for b, k in kerns if k is not None]


def auto_backend(op: str, device: Optional[str]) -> Tuple[str, str]:
    """(backend, why) that ``auto`` picks for ``op`` on tensors of
    ``device`` ('cuda' or 'cpu'): the first kernel of
    :data:`AUTO_ORDER` that imports, else 'torch'. Imports the kernels it
    tries (once)."""
    tried = []
    for backend, kern in _auto_kernels(op, device):
        if kern.load() is not None:
            skipped = '; '.join(tried)
            return backend, (f'{kern.module} imports' + (
                f' ({skipped})' if skipped else ''))
        tried.append(f'{backend}: {kern.module} does not import')
    if not tried:
        return 'torch', f'mmvim has no kernel of {op} for {device} tensors'
    return 'torch', '; '.join(tried)


def resolve_backend(op: str, x: Tensor) -> str:
    """'cuda', 'triton', 'cpu' or 'torch' for one call of ``op`` on ``x``.

    auto: the first kernel of :data:`AUTO_ORDER` for ``x``'s device that
    imports (CUDA: cuda, then triton; CPU: cpu); otherwise torch, with a
    one-time warning when kernels exist but cannot be used. cuda / triton /
    cpu: that kernel, or a RuntimeError saying why it cannot be used (an op
    without a kernel of that kind takes its torch path). torch: always the
    PyTorch implementation.
    """
    wanted = requested_backend()
    if wanted == 'torch':
        return 'torch'
    device = _device(x)
    if wanted == 'auto':
        # (per call: no messages are built unless it falls back)
        kerns = _auto_kernels(op, device)
        for backend, kern in kerns:
            if kern.load() is not None:
                return backend
        if kerns:
            why = '; '.join(f'{k.module}: {k.error}' for _, k in kerns)
            fix = '; or '.join(k.install_hint for _, k in kerns)
            names = ' / '.join(b for b, _ in kerns)
            warn_once(
                f'fallback:{op}:{device}',
                f'mmvim: the {names} kernel of {op} cannot be used ({why}); '
                'falling back to the slower pure-PyTorch path. To fix: '
                f'{fix}. Set {BACKEND_ENV}=torch to silence this warning.')
        return 'torch'
    kern = kernel(op, wanted)
    if kern is None:
        return 'torch'
    if wanted == 'triton':
        if device == 'cpu' and not triton_interpreting():
            raise RuntimeError(
                f'{BACKEND_ENV}=triton but {op} got tensors on cpu: Triton '
                'kernels run on CUDA tensors, and on CPU tensors only under '
                "Triton's interpreter (export TRITON_INTERPRET=1 before "
                'starting Python; slow, for tests). Move the model and data '
                f'to the GPU, or unset {BACKEND_ENV}.')
        if device not in ('cpu', 'cuda'):
            raise RuntimeError(
                f'{BACKEND_ENV}=triton but {op} got tensors on {x.device}; '
                f'the triton kernels need CUDA tensors. Unset {BACKEND_ENV}.')
    elif device != wanted:
        raise RuntimeError(
            f'{BACKEND_ENV}={wanted} but {op} got tensors on {x.device}; the '
            f'{wanted} kernel needs {wanted.upper()} tensors. Move the model '
            f'and data, or unset {BACKEND_ENV}.')
    if kern.load() is None:
        raise RuntimeError(
            f'{BACKEND_ENV}={wanted} but the {wanted} kernel of {op} '
            f'({kern.module}) cannot be used: {kern.error}. To fix: '
            f'{kern.install_hint}; or set {BACKEND_ENV}=torch.')
    return wanted


def kernel_status(backend: str = 'cuda') -> Dict[str, Optional[str]]:
    """{op: None if its ``backend`` kernel imports, else the reason}, for
    every op that has a kernel of that kind."""
    return {op: kerns[backend].error for op, kerns in KERNELS.items()
            if backend in kerns}


def cuda_kernel_status() -> Dict[str, Optional[str]]:
    """{'selective_scan': None or why mamba-ssm's kernel is unavailable,
    'causal_conv1d': the same for causal-conv1d}."""
    return kernel_status('cuda')
