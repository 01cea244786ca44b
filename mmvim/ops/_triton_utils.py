"""What the Triton kernels of :mod:`mmvim.ops` share: the interpreter switch,
the device check, compute dtypes and the autotune bookkeeping.

Importing this module imports triton, so only the Triton kernel modules
(loaded lazily by :mod:`mmvim.ops.dispatch`) import it.

Triton compiles ``@triton.jit`` kernels for a GPU. With ``TRITON_INTERPRET=1``
set before triton is imported, the same kernels run on CPU tensors in numpy
(Triton's interpreter): that is how the kernels are tested on machines
without a GPU. Whether this process runs the interpreter is decided when
the kernel modules are imported (:data:`INTERPRET`), as triton decides it
when a kernel is decorated.
"""
from __future__ import annotations

import inspect
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ['INTERPRET', 'AUTOTUNE', 'rounded', 'check_device',
           'compute_dtype', 'autotune',
           'tl_dtype', 'launched_config', 'configs', 'with_warps',
           'next_pow2', 'check_launch', 'GRID_YZ_MAX']

#: True when the kernels were built for Triton's interpreter (CPU tensors)
INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'
#: False with MMVIM_TRITON_AUTOTUNE=0: one block size per shape, no tuning
AUTOTUNE = os.environ.get('MMVIM_TRITON_AUTOTUNE', '1') != '0'

_TL = {torch.float32: tl.float32, torch.float64: tl.float64}


# Triton's interpreter casts float32 to bfloat16 by truncation (its
# fptrunc drops the low bits); the GPU rounds to nearest even. Under the
# interpreter the kernels round bfloat16 outputs themselves (rounded()).
ROUND_BF16 = tl.constexpr(INTERPRET)


@triton.jit
def rounded(x, ptr):
    """``x`` in ``ptr``'s element type, rounded to nearest even (what the
    GPU's conversion does; the interpreter's bfloat16 cast truncates)."""
    ty = ptr.dtype.element_ty
    # one return per branch (see _bc_row in selective_scan_triton.py)
    if ROUND_BF16 and ty == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(ty)


def check_device(op: str, *tensors: Tensor) -> None:
    """Raise a clear error unless the kernels can run on these tensors:
    CUDA tensors, or CPU tensors under Triton's interpreter."""
    for t in tensors:
        if t is None:
            continue
        if t.is_cuda:
            if INTERPRET:
                raise RuntimeError(
                    f'{op} (triton backend): TRITON_INTERPRET=1 was set when '
                    'the kernels were loaded, so they run in numpy on CPU '
                    'tensors only; unset TRITON_INTERPRET to run them on the '
                    'GPU.')
            continue
        if t.device.type == 'cpu' and INTERPRET:
            continue
        raise RuntimeError(
            f'{op} (triton backend) got a tensor on {t.device}: Triton '
            'kernels run on CUDA tensors. On CPU they run only under '
            "Triton's interpreter (export TRITON_INTERPRET=1 before starting "
            'Python; slow, for testing). Otherwise use MMVIM_SCAN_BACKEND='
            'auto (the cpu or torch backend for CPU tensors).')


#: CUDA's limit on grid axes y and z (the interpreter has none)
GRID_YZ_MAX = 65535
_INT32 = 2**31


def check_launch(op: str, grid_yz: Dict[str, int],
                 int32_offsets: Dict[str, int]) -> None:
    """Raise one clear error where a launch would go wrong on a GPU and
    not in the interpreter: a grid axis y / z above 65,535 (``grid_yz``:
    what each axis counts -> its size), or an offset the kernels compute
    in 32 bits reaching 2^31 (``int32_offsets``: the largest index times
    stride of each, e.g. ``(L - 1) * stride`` along time; the batch and
    channel offsets are 64-bit)."""
    for what, size in grid_yz.items():
        if size > GRID_YZ_MAX:
            raise ValueError(
                f'{op} (triton backend): {size} {what} exceed the '
                f'{GRID_YZ_MAX} blocks a CUDA grid axis takes; split the '
                'call into parts of at most that many')
    for what, extent in int32_offsets.items():
        if extent >= _INT32:
            raise ValueError(
                f'{op} (triton backend): the {what} offset reaches '
                f'{extent} >= 2^31, past the kernels\' 32-bit indexing; '
                'pass a contiguous tensor (or split the sequence)')


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; float32 and the 16-bit types compute in
    float32 (only inputs and outputs are rounded, as mamba-ssm does)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    """The ``tl`` dtype of a compute dtype (float32 / float64)."""
    return _TL[dtype]


def launched_config(kernel) -> Dict[str, int]:
    """The block sizes (``Config.kwargs``) the autotuned ``kernel`` ran
    with in its latest launch (the buffers that depend on them are sized
    for the smallest candidate and read up to what was used)."""
    return dict(kernel.best_config.kwargs)


def configs(candidates: List[Tuple[Dict[str, int], int]],
            interpret: List[Tuple[Dict[str, int], int]],
            default: Optional[Tuple[Dict[str, int], int]] = None
            ) -> List[triton.Config]:
    """``triton.Config`` s from (block sizes, num_warps) pairs (num_warps 0:
    set later by the kernel's pruning). Under the interpreter ``interpret``
    instead (autotuning there is slow and means nothing: with several, the
    kernel's pruning keeps one per shape); with ``MMVIM_TRITON_AUTOTUNE=0``
    only ``default`` when given."""
    if INTERPRET:
        candidates = list(interpret)
    elif not AUTOTUNE and default is not None:
        candidates = [default]
    return [triton.Config(dict(kw), num_warps=w or 4) for kw, w in candidates]


class _OneConfig:
    """What :func:`autotune` gives under the interpreter: launches the
    first config the pruning keeps (there is one per shape) without
    timing it. Triton 3.6's autotuner benchmarks even a single config,
    which needs a GPU driver ("0 active drivers" on CPU); later versions
    skip that. Same interface as triton's Autotuner where mmvim uses it:
    ``kernel[grid](...)``, ``configs``, ``best_config``, ``fn``."""

    def __init__(self, fn, configs, prune) -> None:
        self.fn = fn
        self.configs = configs
        self.prune = prune
        self.best_config: Optional[triton.Config] = None

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            nargs = dict(zip(self.fn.arg_names, args))
            kept = self.prune(self.configs, nargs, **kwargs) if self.prune \
                else self.configs
            self.best_config = kept[0]
            return self.fn[grid](*args, **kwargs, **kept[0].kwargs)
        return launch


def autotune(configs: List[triton.Config], key: List[str],
             prune: Optional[Callable] = None):
    """``triton.autotune`` (configs, key, ``early_config_prune``) for the
    compiler; under the interpreter :class:`_OneConfig`."""
    if INTERPRET:
        return lambda fn: _OneConfig(fn, configs, prune)
    return triton.autotune(configs=configs, key=key, prune_configs_by=(
        {'early_config_prune': prune} if prune else None))


def with_warps(config: triton.Config, num_warps: int) -> triton.Config:
    """``config`` with ``num_warps`` warps. With 8, up to 255 registers a
    thread (``.maxnreg``): without it ptxas for sm_80 caps the scan at 128
    (two blocks per SM) and spills (tools/triton_aot.py); on sm_90 the
    kernels use up to 255 anyway."""
    extra = dict(maxnreg=255) if num_warps >= 8 and _HAS_MAXNREG else {}
    return triton.Config(dict(config.kwargs), num_warps=num_warps,
                         num_stages=config.num_stages, **extra)


_HAS_MAXNREG = 'maxnreg' in inspect.signature(
    triton.Config.__init__).parameters


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def _install_fast_interpreter_scan() -> None:
    """Make ``tl.associative_scan`` with a custom combine function usable
    in Triton's interpreter, which evaluates such a scan one element at a
    time, wrapping every scalar (minutes for a backbone test). This runs
    the same combine function on whole slices in log2(n) doubling steps
    (Hillis-Steele: element i combines with element i - 2**k), as a GPU
    does in a tree: the association order of an associative scan is not
    fixed, and the results agree with the element loop to round-off.
    Reverse scans keep the interpreter's meaning (the scan of the flipped
    axis, flipped back). Nothing changes outside the interpreter."""
    try:
        from triton.runtime import interpreter
        ops = interpreter.ScanOps
    except (ImportError, AttributeError):
        return
    if getattr(ops, '_mmvim_fast', False) or not hasattr(ops,
                                                         'generic_scan'):
        return
    import numpy as np

    def generic_scan(self, input):
        axis = self.axis
        accs = [arg.handle.data for arg in input]
        length = accs[0].shape[axis]
        pos = np.arange(length).reshape(
            [-1 if i == axis else 1 for i in range(accs[0].ndim)])
        step = 1
        while step < length:
            # element i combines with i - step (the first `step` keep
            # their value; a full-size shifted copy keeps tl's power-of-two
            # shapes)
            earlier = [self.to_tensor(np.roll(a, step, axis=axis), arg.dtype)
                       for a, arg in zip(accs, input)]
            later = [self.to_tensor(a, arg.dtype)
                     for a, arg in zip(accs, input)]
            with np.errstate(all='ignore'):
                res = self.combine_fn.fn(*earlier, *later)
            res = res if isinstance(res, tuple) else (res,)
            accs = [np.where(pos >= step, r.handle.data if isinstance(
                r, tl.core.tensor) else r, a).astype(a.dtype)
                for a, r in zip(accs, res)]
            step *= 2
        return [self.to_tensor(a, arg.dtype) for a, arg in zip(accs, input)]

    ops.generic_scan = generic_scan
    ops._mmvim_fast = True


def _install_patch_once_per_launch() -> None:
    """Triton's interpreter re-patches ``triton.language`` (walking every
    member of tl, tl.core, tl.math with ``inspect.getmembers``) on every
    call of a ``@triton.jit`` helper inside a kernel (``tl.sum``,
    ``tl.sigmoid``, ... are such helpers), about a millisecond each, and
    never undoes those nested patches. The modules are already patched by
    the kernel launch or an earlier helper call of the same launch: patch
    each module set once per launch. The launch's own patch and its
    restore at the end are unchanged."""
    try:
        import inspect

        from triton.runtime import interpreter
        original = interpreter._patch_lang
        scope_cls = interpreter._LangPatchScope
    except (ImportError, AttributeError):
        return
    if getattr(original, '_mmvim_fast', False):
        return
    state = dict(active=False, langs=set())

    def langs_of(fn):
        return {id(v) for v in fn.__globals__.values()
                if inspect.ismodule(v) and v in (tl, tl.core)}

    def patch_lang(fn):
        langs = langs_of(fn)
        if state['active']:
            if langs <= state['langs']:
                return scope_cls()
            state['langs'] |= langs
            return original(fn)
        scope = original(fn)
        state.update(active=True, langs=set(langs))
        restore = scope.restore

        def restore_and_end():
            state.update(active=False, langs=set())
            restore()
        scope.restore = restore_and_end
        return scope

    patch_lang._mmvim_fast = True
    interpreter._patch_lang = patch_lang


if INTERPRET:
    _install_fast_interpreter_scan()
    _install_patch_once_per_launch()

