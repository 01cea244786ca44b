"""Compile mmvim's Triton kernels for NVIDIA GPUs ahead of time, with no
GPU: every autotune config the pruning keeps, at the calls the backbones
make and at the corners of the contract, in float32, float16 and bfloat16;
registers, spills and shared memory from the bundled ``ptxas -v``.

    python tools/triton_aot.py --arch 80 90 [--json OUT] [--defaults-only]

How: Triton's own launch path runs (``JITFunction.run(warmup=True)``: the
same argument specialization, divisibility and constexpr folding as a real
launch) against a stand-in driver whose target is ``GPUTarget('cuda', ARCH,
32)``. The host wrappers of the kernels run unchanged on CPU tensors with
the models' strides, so each kernel sees the arguments it would see on a
GPU; the autotuner, instead of timing, compiles every config its pruning
keeps and marks the one ``MMVIM_TRITON_AUTOTUNE=0`` would take (the
*default* config of that shape). Nothing is launched: outputs are
meaningless and unused. The selective scan's backward is compiled for every
``BLOCK_L`` its forward may pick.

Rows (printed and in the JSON): kernel, case, dtype, arch, config,
default?, registers, spill bytes (stores / loads), stack, shared memory
(Triton's dynamic allocation), ok / the compile error. Exit status 1 when a
config fails to compile or a default config spills.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from typing import Dict, Iterator, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DTYPES = ('float32', 'float16', 'bfloat16')
ARCHS = (80, 90)
#: image size of the captured model calls (their UperNet crop)
MODEL_SIZE = 512
MODELS = ('vim_s', 'vmamba_t', 'mambavision_t')


# ---------------------------------------------------------------- target ---
class AotDriver:
    """The part of a Triton driver that ``JITFunction.run`` asks for before
    it compiles: a device (the architecture number, so that every
    architecture has its own kernel cache), a stream and the target."""

    def __init__(self, arch: int) -> None:
        self.arch = arch

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> int:
        return self.arch

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget('cuda', self.arch, 32)


@contextlib.contextmanager
def target(arch: int) -> Iterator[None]:
    """Make ``sm_<arch>`` Triton's current target in this process."""
    from triton.runtime import driver
    previous = getattr(driver, '_active', None)
    driver.set_active(AotDriver(arch))
    try:
        yield
    finally:
        driver._active = previous


# -------------------------------------------------------------- kernels ---
def kernel_modules():
    """(module, {kernel name: autotuned kernel}) of the Triton kernels; the
    interpreter must be off (TRITON_INTERPRET unset) when they are
    imported."""
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        raise SystemExit('triton_aot: unset TRITON_INTERPRET: the kernels '
                         'must be built for the compiler, not the '
                         'interpreter')
    from tools.gpu_check.imports import load_mmvim
    load_mmvim()
    from mmvim.ops import causal_conv1d_triton as conv
    from mmvim.ops import selective_scan_triton as scan
    return [(scan, {'scan_fwd': scan._fwd_kernel,
                    'scan_bwd': scan._bwd_kernel}),
            (conv, {'conv_fwd': conv._fwd_kernel,
                    'conv_bwd': conv._bwd_kernel})]


def _config_name(cfg, launch_kwargs: dict) -> str:
    """The config's block sizes (with the backward's BLOCK_L, which is a
    launch argument there) and num_warps."""
    sizes = dict(cfg.kwargs)
    if 'BLOCK_L' in launch_kwargs:
        sizes['BLOCK_L'] = launch_kwargs['BLOCK_L']
    kw = ' '.join(f'{k}={v}' for k, v in sorted(sizes.items()))
    return f'{kw} warps={cfg.num_warps}'


class Compiler:
    """Replaces each autotuned kernel's launch by the compilation of its
    kept configs; collects one row per compiled config."""

    def __init__(self, defaults_only: bool = False) -> None:
        self.defaults_only = defaults_only
        self.rows: List[dict] = []
        self.context: dict = {}
        self.fwd_block_ls: List[int] = []

    def _compile(self, name, kernel, args, grid, kwargs, cfg,
                 default) -> None:
        row = dict(kernel=name, config=_config_name(cfg, kwargs),
                   default=default,
                   **self.context)
        start = time.perf_counter()
        try:
            compiled = kernel.fn.run(*args, grid=grid, warmup=True,
                                     **kwargs, **cfg.all_kwargs())
            row.update(status='ok', shared=int(compiled.metadata.shared),
                       ptx=compiled.asm['ptx'],
                       **scan_warps(compiled.asm.get('ttgir', '')))
        except Exception as exc:  # noqa: BLE001  (reported per config)
            text = str(exc).strip().splitlines()
            row.update(status='error', error=(
                f'{type(exc).__name__}: '
                + ' | '.join(line.strip() for line in text[-3:]))[:400])
        row['compile_s'] = round(time.perf_counter() - start, 3)
        self.rows.append(row)

    def launcher(self, name: str, kernel, module):
        def run(*args, grid=None, warmup=False, **kwargs):
            kernel.nargs = dict(zip(kernel.arg_names, args))
            default = module.default_config(kernel, kernel.nargs, **kwargs)
            block_ls = [None]
            if name == 'scan_bwd':  # every BLOCK_L the forward may take
                block_ls = [kwargs['BLOCK_L']] if self.defaults_only else \
                    sorted(set(self.fwd_block_ls))
            for block_l in block_ls:
                kw = dict(kwargs) if block_l is None else dict(
                    kwargs, BLOCK_L=block_l)
                kept = [default] if self.defaults_only else \
                    kernel.prune_configs(kw)
                if block_l is not None and block_l != kwargs['BLOCK_L']:
                    is_default = None  # not the default forward's BLOCK_L
                else:
                    is_default = default
                for cfg in kept:
                    self._compile(name, kernel, args, grid, kw, cfg,
                                  _same(cfg, is_default))
                if name == 'scan_fwd':
                    self.fwd_block_ls = [c.kwargs['BLOCK_L'] for c in kept]
            kernel.best_config = default
            kernel.nargs = None
        return run

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        saved = []
        for module, kernels in kernel_modules():
            saved.append((module, 'check_device', module.check_device))
            # CPU tensors stand for the GPU's: nothing is launched
            module.check_device = lambda *a, **k: None
            for name, kernel in kernels.items():
                saved.append((kernel, 'run', None))
                launch = self.launcher(name, kernel, module)
                kernel.run = types.MethodType(
                    lambda _, *a, _f=launch, **k: _f(*a, **k), kernel)
        try:
            yield
        finally:
            for obj, attr, value in saved:
                if value is None:
                    del obj.__dict__[attr]
                else:
                    setattr(obj, attr, value)


def _same(cfg, default) -> bool:
    return default is not None and cfg.kwargs == default.kwargs and \
        cfg.num_warps == default.num_warps


# ---------------------------------------------------------------- cases ---
def _scan_spec(dim, length, dstate, b_kind, c_kind, with_d, with_z,
               with_bias, softplus, reverse=None, batch=2) -> dict:
    """A contiguous selective_scan call (its tensors as TensorSpecs)."""
    import torch

    from tools.gpu_check.capture import TensorSpec

    def spec(*shape):
        return TensorSpec(torch.empty(shape))

    def bc(kind):
        if kind == 'const':
            return spec(dim, dstate)
        if kind == 'var':
            return spec(batch, dstate, length)
        return spec(batch, int(kind[5:]), dstate, length)
    args = [spec(batch, dim, length), spec(batch, dim, length),
            spec(dim, dstate), bc(b_kind), bc(c_kind),
            spec(dim) if with_d else None,
            spec(batch, dim, length) if with_z else None]
    kwargs = dict(delta_bias=spec(dim) if with_bias else None,
                  delta_softplus=softplus)
    if reverse is not None:
        kwargs['reverse'] = reverse
    return dict(op='selective_scan', args=args, kwargs=kwargs)


def _conv_spec(dim, length, width, bias, silu, batch=2) -> dict:
    import torch

    from tools.gpu_check.capture import TensorSpec
    return dict(op='causal_conv1d', args=[
        TensorSpec(torch.empty(batch, dim, length)),
        TensorSpec(torch.empty(dim, width)),
        TensorSpec(torch.empty(dim)) if bias else None,
        'silu' if silu else None], kwargs={})


def contract_cases(max_dstate: int) -> Dict[str, dict]:
    """The corners of the contract the models do not reach: each kind of
    B / C, with and without D / z / delta_bias / softplus, ``reverse``,
    the largest d_state the wrapper accepts, every conv width."""
    return {
        'const_bc_all_options': _scan_spec(768, 1024, 16, 'const', 'const',
                                           True, True, True, True),
        'var_bc_no_options': _scan_spec(768, 1024, 16, 'var', 'var',
                                        False, False, False, False),
        'mixed_bc_z_only': _scan_spec(768, 1000, 16, 'const', 'var',
                                      False, True, False, False),
        'group4_reverse_z': _scan_spec(768, 1024, 16, 'group4', 'group4',
                                       True, True, True, True,
                                       (False, False, True, True)),
        f'group2_dstate{max_dstate}': _scan_spec(
            512, 1024, max_dstate, 'group2', 'group2', True, True, True,
            True),
        'conv_width2_plain': _conv_spec(768, 1000, 2, False, False),
        'conv_width3_bias': _conv_spec(768, 1024, 3, True, False),
    }


def model_cases(size: int = MODEL_SIZE,
                models=MODELS) -> Dict[str, dict]:
    """The distinct kernel calls of one forward of each backbone at
    ``size``, as the models make them (layouts, views, offsets). The
    forward runs on the meta device: shapes, strides and storage offsets
    without the arithmetic (a third of the time of a CPU forward, with the
    same calls)."""
    from tools.gpu_check.capture import kernel_calls
    cases = {}
    for name in models:
        seen = 0
        for op, args, kwargs in kernel_calls(name, size, batch=2,
                                             device='meta', compute=False,
                                             reverses_in_kernel=True):
            seen += 1
            cases[f'{name}@{size}:{op}:{seen}'] = dict(op=op, args=args,
                                                       kwargs=kwargs)
    return cases


def _materialize(case: dict, dtype):
    """The call's tensors: activations (rank >= 3: u, delta, z,
    time-varying B / C, x) in ``dtype``, weights (A, D, delta_bias, the
    conv weight and bias) in float32, as under autocast."""
    import torch

    from tools.gpu_check.capture import TensorSpec

    def make(v):
        if not isinstance(v, TensorSpec):
            return v
        t = v.make(dtype if len(v.shape) >= 3 else torch.float32,
                   fill=False).zero_()
        return t.requires_grad_(True)
    return [make(a) for a in case['args']], {k: make(v) for k, v in
                                              case['kwargs'].items()}


def _run_case(case: dict, dtype) -> None:
    """Forward and backward of one call through the triton backend's
    wrapper, which the public op calls with the same arguments (launches
    are compilations here)."""
    from mmvim.ops.causal_conv1d_triton import causal_conv1d_triton
    from mmvim.ops.selective_scan_triton import selective_scan_triton
    fn = dict(selective_scan=selective_scan_triton,
              causal_conv1d=causal_conv1d_triton)[case['op']]
    args, kwargs = _materialize(case, dtype)
    out = fn(*args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(out.detach().clone())


# ------------------------------------------------------- scan layouts ---
_LAYOUT = re.compile(r'^(#\w+) = #\w+\.blocked<\{(.*?)\}>', re.M)
_SCAN = re.compile(r'"tt\.scan"\(.*?<\{axis = (\d+) : i32, reverse = '
                   r'(true|false)\}>')
_OPERAND = re.compile(r'\}\) : \(tensor<[^,>]+, (#\w+)>')


def scan_warps(ttgir: str) -> dict:
    """How many warps share the scan axis of the forward and the reverse
    ``tl.associative_scan`` s of a compiled kernel (most over its scans;
    None: no such scan or a layout this reads not). A reverse scan whose
    axis spans warps takes the path upstream triton#4362 reports wrong
    results on; the interpreter cannot show it (docs/triton.md)."""
    layouts = {}
    for name, body in _LAYOUT.findall(ttgir):
        fields = dict(re.findall(r'(\w+) = \[([\d, ]*)\]', body))
        layouts[name] = [int(v) for v in fields['warpsPerCTA'].split(',')]
    out = dict(fwd_scan_warps=None, rev_scan_warps=None)
    for match in _SCAN.finditer(ttgir):
        axis, reverse = int(match.group(1)), match.group(2) == 'true'
        operand = _OPERAND.search(ttgir, match.end())
        warps = layouts.get(operand.group(1)) if operand else None
        if warps is None:
            continue
        key = 'rev_scan_warps' if reverse else 'fwd_scan_warps'
        out[key] = max(out[key] or 0, warps[axis])
    return out


# ---------------------------------------------------------------- ptxas ---
def ptxas_path(arch: int) -> str:
    """The ptxas Triton itself runs for ``sm_<arch>`` (its bundled one;
    triton 3.9 takes ``ptxas-blackwell`` from sm_90 on, 3.6 from sm_100);
    TRITON_PTXAS_PATH overrides."""
    if os.environ.get('TRITON_PTXAS_PATH'):
        return os.environ['TRITON_PTXAS_PATH']
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except (ImportError, AttributeError, TypeError):
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), 'backends',
                            'nvidia', 'bin', 'ptxas')
    if not os.path.exists(path):
        raise SystemExit(f'triton_aot: no ptxas at {path} (this triton has '
                         'no NVIDIA backend binaries); set TRITON_PTXAS_PATH')
    return path


_REGS = re.compile(r'Used (\d+) registers')
_SPILL = re.compile(r'(\d+) bytes stack frame, (\d+) bytes spill stores, '
                    r'(\d+) bytes spill loads')


def ptxas_usage(ptx: str, arch: int, ptxas: str) -> dict:
    """Registers, stack and spill bytes of the kernel in ``ptx`` for
    ``sm_<arch>`` (sm_90a for 90, as Triton compiles it)."""
    gpu = f'sm_{arch}a' if arch == 90 else f'sm_{arch}'
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'k.ptx')
        with open(src, 'w') as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, '-v', '--gpu-name', gpu, src, '-o',
                               os.path.join(tmp, 'k.cubin')],
                              capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    if proc.returncode:
        return dict(status='error', error='ptxas: ' + text.strip()[-300:])
    regs, spill = _REGS.search(text), _SPILL.search(text)
    return dict(registers=int(regs.group(1)),
                stack=int(spill.group(1)) if spill else 0,
                spill_stores=int(spill.group(2)) if spill else 0,
                spill_loads=int(spill.group(3)) if spill else 0)


# ----------------------------------------------------------------- main ---
def compile_all(archs=ARCHS, dtypes=DTYPES, defaults_only: bool = False,
                models=MODELS, size: int = MODEL_SIZE,
                log=print) -> List[dict]:
    """One row per compiled (kernel, case, dtype, arch, config)."""
    import torch
    import triton
    kernel_modules()  # mmvim loaded (lite where the stack is missing)

    from mmvim.ops import selective_scan_triton
    compiler = Compiler(defaults_only)
    with compiler.patched():
        cases = dict(model_cases(size, models))
        cases.update(contract_cases(selective_scan_triton.MAX_DSTATE))
        for arch in archs:
            with target(arch):
                for case_name, case in cases.items():
                    for dtype in dtypes:
                        compiler.context = dict(case=case_name, dtype=dtype,
                                                arch=arch)
                        before = len(compiler.rows)
                        _run_case(case, getattr(torch, dtype))
                        new = compiler.rows[before:]
                        log(f'sm_{arch} {dtype:8s} {case_name}: '
                            f'{len(new)} configs, '
                            f'{sum(r["status"] != "ok" for r in new)} '
                            'errors', flush=True)
    for row in compiler.rows:
        if row['status'] == 'ok':
            row.update(ptxas_usage(row.pop('ptx'), row['arch'],
                                   ptxas_path(row['arch'])))
        row['triton'] = triton.__version__
    return compiler.rows


def failures(rows: List[dict]) -> Dict[str, List[dict]]:
    """Rows that fail the bar: compile errors (any config) and default
    configs that spill."""
    return dict(
        errors=[r for r in rows if r['status'] != 'ok'],
        default_spills=[r for r in rows if r['status'] == 'ok'
                        and r['default'] and r['spill_stores'] > 0])


def table(rows: List[dict], defaults_only: bool = True) -> str:
    """A markdown table of the rows (the default configs, by default)."""
    head = ('| kernel | case | dtype | arch | config | registers | '
            'spill bytes (st/ld) | smem | status | warps on the reverse '
            'scan axis |')
    lines = [head, '|' + '---|' * 10]
    for r in rows:
        if defaults_only and not r['default']:
            continue
        if r['status'] != 'ok':
            lines.append(f'| {r["kernel"]} | {r["case"]} | {r["dtype"]} | '
                         f'sm_{r["arch"]} | {r["config"]} | | | | '
                         f'{r["error"][:80]} | |')
            continue
        lines.append(
            f'| {r["kernel"]} | {r["case"]} | {r["dtype"]} | sm_{r["arch"]} '
            f'| {r["config"]} | {r["registers"]} | {r["spill_stores"]}/'
            f'{r["spill_loads"]} | {r["shared"]} | ok | '
            f'{r.get("rev_scan_warps") or ""} |')
    return '\n'.join(lines)


def summary(rows: List[dict]) -> str:
    """Per kernel / arch / dtype: configs compiled, errors, worst registers
    and spills over all kept configs and over the default ones."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r['kernel'], r['arch'], r['dtype']), []).append(r)
    lines = ['| kernel | arch | dtype | configs | errors | max registers | '
             'max spill (all) | configs spilling | max spill (default) |',
             '|' + '---|' * 9]
    for (kernel, arch, dtype), rs in sorted(groups.items()):
        ok = [r for r in rs if r['status'] == 'ok']
        dflt = [r['spill_stores'] for r in ok if r['default']]
        lines.append(
            f'| {kernel} | sm_{arch} | {dtype} | {len(rs)} | '
            f'{len(rs) - len(ok)} | '
            f'{max((r["registers"] for r in ok), default=0)} | '
            f'{max((r["spill_stores"] for r in ok), default=0)} | '
            f'{sum(r["spill_stores"] > 0 for r in ok)} | '
            f'{max(dflt, default=0)} |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', nargs='+', type=int, default=list(ARCHS),
                        help='compute capabilities (80: A100, 90: H100/H200)')
    parser.add_argument('--dtype', nargs='+', default=list(DTYPES),
                        choices=DTYPES)
    parser.add_argument('--defaults-only', action='store_true',
                        help='only the config MMVIM_TRITON_AUTOTUNE=0 takes '
                        'for each call (what the test compiles)')
    parser.add_argument('--models', nargs='*', default=list(MODELS),
                        help='backbones whose calls are compiled')
    parser.add_argument('--size', type=int, default=MODEL_SIZE,
                        help='image size of the captured model calls')
    parser.add_argument('--json', help='write the rows here')
    parser.add_argument('--markdown', help='write the tables here')
    args = parser.parse_args(argv)
    start = time.time()
    rows = compile_all(args.arch, args.dtype, args.defaults_only,
                       args.models, args.size)
    bad = failures(rows)
    print('\n' + summary(rows) + '\n')
    print(table(rows))
    import triton
    report = dict(triton=triton.__version__, archs=args.arch,
                  dtypes=args.dtype, defaults_only=args.defaults_only,
                  models=args.models, size=args.size,
                  seconds=round(time.time() - start, 1),
                  errors=len(bad['errors']),
                  default_spills=len(bad['default_spills']), rows=rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)),
                    exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(f'triton {triton.__version__}, '
                    f'{len(rows)} compiled configs\n\n{summary(rows)}\n\n'
                    f'Default configs:\n\n{table(rows)}\n')
    print(f'\n{len(rows)} configs compiled in {time.time() - start:.0f} s: '
          f'{len(bad["errors"])} errors, {len(bad["default_spills"])} '
          'default configs spilling')
    for r in bad['errors'][:10]:
        print(f'  error: {r["kernel"]} {r["case"]} {r["dtype"]} '
              f'sm_{r["arch"]} {r["config"]}: {r["error"]}')
    for r in bad['default_spills'][:10]:
        print(f'  spill: {r["kernel"]} {r["case"]} {r["dtype"]} '
              f'sm_{r["arch"]} {r["config"]}: {r["spill_stores"]} bytes')
    return 1 if bad['errors'] or bad['default_spills'] else 0


if __name__ == '__main__':
    sys.exit(main())
