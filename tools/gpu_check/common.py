"""What the phases of tools/gpu_check.py share: the time budget, the
comparison and timing helpers, result bookkeeping."""
from __future__ import annotations

import os
import signal
import time
from typing import Callable, Dict, List, Optional

# UperNet configs' per-GPU batch (configs/upernet_*_ade20k.py): the speed
# phase times the kernel calls at the batch training runs them
CONFIG_BATCH = {'vim_s': 8, 'vmamba_t': 2, 'mambavision_t': 1}
# the parity and speed phases: the block shapes of these backbones
MODELS = ('vim_s', 'vmamba_t', 'mambavision_t')


class PhaseTimeout(BaseException):
    """Raised in a phase when the budget is spent. A BaseException (as
    KeyboardInterrupt), so that the phases' per-row ``except Exception``
    and Triton's interpreter (which wraps what a kernel raises) let it
    through."""


class Budget:
    """The run's time budget: a deadline, and an alarm that interrupts a
    phase (between Python bytecodes: a running CUDA kernel or compile step
    finishes first) so that the report is written before the deadline."""

    def __init__(self, seconds: Optional[float], margin: float = 5.0,
                 start: Optional[float] = None) -> None:
        self.start = time.time() if start is None else start
        self.deadline = None if seconds is None else \
            self.start + seconds - margin

    def left(self) -> float:
        return float('inf') if self.deadline is None else \
            self.deadline - time.time()

    def run(self, fn: Callable[[], dict]) -> dict:
        """``fn()``, raising :class:`PhaseTimeout` inside it at the
        deadline (SIGALRM; the main thread of a POSIX process)."""
        if self.deadline is None or not hasattr(signal, 'setitimer'):
            return fn()

        def alarm(signum, frame):
            raise PhaseTimeout(f'budget spent ({self.left():.0f} s left)')
        previous = signal.signal(signal.SIGALRM, alarm)
        # and again every second, should something still swallow it
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01), 1.0)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class Phase:
    """A phase's result as it grows: rows are kept when the budget
    interrupts it, so a partial phase still reports what it measured."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.result: Dict = dict(status='running', rows=[])

    @property
    def rows(self) -> List[dict]:
        return self.result['rows']

    def add(self, row: dict, line: str = '') -> None:
        self.rows.append(row)
        print(f'  {self.name}: {line or row}', flush=True)


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| (of the reference b), in float32."""
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def err(exc: BaseException) -> str:
    return f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]


def worst(rows: List[dict], ok=lambda r: r.get('status') == 'ok') -> str:
    if not rows:
        return 'skipped'
    return 'ok' if all(ok(r) for r in rows) else 'failed'


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        import torch
        torch.cuda.synchronize()


def with_backend(backend: str):
    """A context manager that sets MMVIM_SCAN_BACKEND (restored after)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        saved = os.environ.get('MMVIM_SCAN_BACKEND')
        os.environ['MMVIM_SCAN_BACKEND'] = backend
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop('MMVIM_SCAN_BACKEND', None)
            else:
                os.environ['MMVIM_SCAN_BACKEND'] = saved
    return ctx()


def cast_call(args: list, kwargs: dict, dtype, requires_grad: bool):
    """Fresh leaf copies of a captured call's tensors: activations (rank
    >= 3) in ``dtype``, weights (A, D, delta_bias, conv weight / bias) in
    float32, as autocast passes them."""
    import torch

    def leaf(v):
        if not isinstance(v, torch.Tensor):
            return v
        t = v.detach().to(dtype if v.dim() >= 3 else torch.float32).clone()
        return t.requires_grad_(requires_grad and t.is_floating_point())
    return [leaf(a) for a in args], {k: leaf(v) for k, v in kwargs.items()}


def run_call(op: str, args: list, kwargs: dict, backward: bool,
             dout=None):
    """One call of ``mmvim.ops.<op>`` (forward, or forward + backward of
    ``dout``): (output, gradients of the tensors that need them)."""
    import torch

    import mmvim.ops as ops
    fn = getattr(ops, op)
    leaves = [t for t in list(args) + list(kwargs.values())
              if isinstance(t, torch.Tensor) and t.requires_grad]
    for t in leaves:
        t.grad = None
    if not backward:
        with torch.no_grad():
            return fn(*args, **kwargs), []
    out = fn(*args, **kwargs)
    out.backward(dout if dout is not None else torch.ones_like(out))
    return out.detach(), [t.grad for t in leaves]
