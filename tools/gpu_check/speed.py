"""Phase 2, speed: the Triton kernels on the calls of Vim-S, VMamba-T and
MambaVision-T at 512 and 1024 (batch of their UperNet config), forward
and forward + backward, median of ``--repeats`` after one warm-up; the
torch backend on the same call for scale (and mamba-ssm's kernels when
they import: phase 6 builds them). The first call of a shape also
compiles (``first_call_s``: compile + run, the cost a training run pays
once per shape)."""
from __future__ import annotations

import time

from .capture import describe, kernel_calls
from .common import (
    CONFIG_BATCH,
    MODELS,
    cast_call,
    run_call,
    synchronize,
    with_backend,
)

SIZES = (512, 1024)


def time_call(op, args, kwargs, backend, device, repeats, backward):
    """(first call seconds, median seconds) of one call."""
    import statistics
    a, kw = cast_call(args, kwargs, args[0].dtype, backward)
    times = []
    with with_backend(backend):
        for _ in range(repeats + 1):
            start = time.perf_counter()
            run_call(op, a, kw, backward)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def backends_here():
    """triton and torch, and cuda where mamba-ssm / causal-conv1d import."""
    from mmvim.ops import dispatch
    names = ['triton', 'torch']
    if dispatch.kernel_status('cuda').get('selective_scan') is None:
        names.insert(1, 'cuda')
    return names


def run(args, phase) -> None:
    sizes = (64,) if args.tiny else (args.sizes or SIZES)
    repeats = args.repeats
    backends = backends_here() if args.device.startswith('cuda') \
        else ['triton', 'torch']
    for size in sizes:
        for model in args.models or MODELS:
            batch = 1 if args.tiny else CONFIG_BATCH[model]
            with with_backend('triton'):
                calls = kernel_calls(model, size, batch, args.device,
                                     args.tiny)
            for op, a, kw in calls:
                row = dict(model=model, img_size=size, **describe(op, a, kw))
                for backend in backends:
                    entry = {}
                    try:
                        first, fwd = time_call(op, a, kw, backend,
                                               args.device, repeats, False)
                        _, both = time_call(op, a, kw, backend, args.device,
                                            repeats, True)
                        entry.update(first_call_s=first, fwd_ms=fwd * 1e3,
                                     fwd_bwd_ms=both * 1e3)
                    except Exception as exc:  # noqa: BLE001
                        entry['error'] = f'{type(exc).__name__}: {exc}'[:200]
                    row[backend] = entry
                tri = row['triton']
                for other in backends[1:]:
                    if 'fwd_bwd_ms' in tri and 'fwd_bwd_ms' in row[other]:
                        row[f'triton_over_{other}_fwd_bwd'] = \
                            tri['fwd_bwd_ms'] / row[other]['fwd_bwd_ms']
                row['status'] = 'error' if 'error' in tri else 'ok'
                phase.add(row, f'{model}@{size} {op}: ' + (
                    tri.get('error') or f'triton fwd {tri["fwd_ms"]:.2f} ms, '
                    f'fwd+bwd {tri["fwd_bwd_ms"]:.2f} ms'))
