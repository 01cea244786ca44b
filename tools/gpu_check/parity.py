"""Phase 1, parity: mmvim's Triton kernels against the torch backend on
the calls the backbones make (Vim-S, VMamba-T, MambaVision-T), forward
and backward, float32 and bfloat16.

Each captured call runs with both backends on the same inputs (bfloat16:
activations in bfloat16, weights in float32, as under autocast) and the
same output gradient; the row holds the largest difference of the output
and of every gradient, relative to the largest entry of the torch
result. The calls are captured with the triton backend on, so VMamba's
reversed routes reach the kernel as ``reverse`` flags (the backward's
reverse ``tl.associative_scan``: see docs/triton.md on triton#4362)."""
from __future__ import annotations

from .capture import describe, kernel_calls
from .common import MODELS, cast_call, rel_diff, run_call, with_backend

# float32: the two backends add in other orders (a tree scan against a
# sequential one); bfloat16: outputs and gradients are rounded to 8 bits
# once, so one rounding step of the largest entries (2^-8) plus that
TOL = {'float32': 1e-4, 'bfloat16': 1e-2}
DTYPES = ('float32', 'bfloat16')


def compare(op: str, args: list, kwargs: dict, dtype) -> dict:
    """Triton vs torch on one call: relative differences."""
    import torch
    gen = torch.Generator(device=args[0].device).manual_seed(0)
    res = {}
    dout = None
    for backend in ('torch', 'triton'):
        a, kw = cast_call(args, kwargs, dtype, True)
        if dout is None:
            shape = a[0].shape
            dout = torch.randn(shape, generator=gen, device=a[0].device,
                               dtype=a[0].dtype)
        with with_backend(backend):
            res[backend] = run_call(op, a, kw, True, dout)
    (out_ref, g_ref), (out, g) = res['torch'], res['triton']
    grads = [rel_diff(x, y) for x, y in zip(g, g_ref)]
    return dict(out_rel_diff=rel_diff(out, out_ref),
                grad_rel_diff=max(grads) if grads else 0.0)


def run(args, phase) -> None:
    import torch
    size, batch = (64, 1) if args.tiny else (512, 2)
    for model in args.models or MODELS:
        with with_backend('triton'):
            calls = kernel_calls(model, size, batch, args.device, args.tiny)
        for op, a, kw in calls:
            for dtype in DTYPES:
                row = dict(model=model, img_size=size, dtype=dtype,
                           **describe(op, a, kw))
                row.update(compare(op, a, kw, getattr(torch, dtype)))
                worst = max(row['out_rel_diff'], row['grad_rel_diff'])
                row['tolerance'] = TOL[dtype]
                row['status'] = 'ok' if worst < TOL[dtype] else 'mismatch'
                phase.add(row, f'{model} {op} {dtype}: {row["status"]} '
                          f'(out {row["out_rel_diff"]:.1e}, grad '
                          f'{row["grad_rel_diff"]:.1e})')
