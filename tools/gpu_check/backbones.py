"""Phase 3, backbones: Vim-S, VMamba-T and MambaVision-T forward +
backward under bfloat16 autocast with the triton backend (scan and conv)
against the torch backend, same weights and input: largest relative
difference of the outputs and of the parameter gradients, and the time of
one forward + backward with each (after one warm-up)."""
from __future__ import annotations

import time

from .capture import build_backbone
from .common import MODELS, rel_diff, synchronize, with_backend

# the two backends round different intermediates to bfloat16 (the mixers'
# linear layers see other inputs once a scan output differs by one ulp)
TOL = dict(output=5e-2, grad=1e-1)


def fwd_bwd(model, x, backend: str, device: str):
    """(outputs, {name: grad}, seconds of the second of two calls)."""
    import torch
    seconds = 0.0
    with with_backend(backend):
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.split(':')[0], dtype=torch.bfloat16):
                outs = model(x)
            sum(o.float().mean() for o in outs).backward()
            synchronize(device)
            seconds = time.perf_counter() - start
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return [o.detach() for o in outs], grads, seconds


def run(args, phase) -> None:
    import torch
    size, batch = (64, 1) if args.tiny else (512, 2)
    for name in MODELS:
        row = dict(model=name, img_size=size, batch_size=batch,
                   amp='bfloat16')
        torch.manual_seed(0)
        # eval: no stochastic depth, so both backends compute one function
        model = build_backbone(name, size, args.tiny).to(args.device).eval()
        x = torch.randn(batch, 3, size, size, device=args.device)
        ref_out, ref_grad, row['torch_s'] = fwd_bwd(model, x, 'torch',
                                                    args.device)
        out, grad, row['triton_s'] = fwd_bwd(model, x, 'triton', args.device)
        row['output_rel_diff'] = max(rel_diff(a, b)
                                     for a, b in zip(out, ref_out))
        row['grad_rel_diff'] = max(rel_diff(grad[n], ref_grad[n])
                                   for n in ref_grad)
        row['status'] = 'ok' if (row['output_rel_diff'] < TOL['output']
                                 and row['grad_rel_diff'] < TOL['grad']) \
            else 'mismatch'
        phase.add(row, f'{name}: {row["status"]} (out '
                  f'{row["output_rel_diff"]:.1e}, grad '
                  f'{row["grad_rel_diff"]:.1e}; triton {row["triton_s"]:.3f}'
                  f' s, torch {row["torch_s"]:.3f} s)')
        del model
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
