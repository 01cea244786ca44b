"""Stored outputs of the default backbones, to prove that defaults stay
unchanged (``tests/test_scan_routes.py``).

Small seeded Vim, VMamba and MambaVision models (reduced depth and width,
odd input sizes) run once in eval mode (the outputs) and once in train mode
with a backward (the gradient norm of the input and of every parameter,
in ``named_parameters`` order).
``tests/data/default_outputs.pt`` holds what this code computed BEFORE scan
routes were added (commit ae016d2, torch backend); the test recomputes it
with the current code and compares to float32 round-off. Regenerate only
for a deliberate change of the default models:

    MMVIM_SCAN_BACKEND=torch PYTHONPATH=$PWD python tests/default_outputs.py --write
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Dict

import torch

STORE = osp.join(osp.dirname(osp.abspath(__file__)), 'data',
                 'default_outputs.pt')

# name: (class, kwargs, input (H, W)); all default routes
CASES = {
    'vim': ('Vim', dict(embed_dims=16, depth=2, patch_size=8,
                        img_size=(40, 56), d_state=4, out_indices=(0, 1)),
            (37, 53)),
    'vim_cls_rope_residual': (
        'Vim', dict(embed_dims=16, depth=3, patch_size=8, img_size=(32, 32),
                    d_state=4, out_indices=(1, 2), with_cls_token=True,
                    use_rope=True, rope_residual=True, pt_seq_len=4,
                    feature='residual', final_norm=True),
        (37, 53)),
    'vmamba': ('VMamba', dict(dims=8, depths=(1, 1, 2, 1), ssm_ratio=2.0,
                              ssm_d_state=2, drop_path_rate=0.0),
               (37, 45)),
    'mambavision': ('MambaVision', dict(
        dim=8, in_dim=8, depths=(1, 1, 3, 2), num_heads=(1, 1, 2, 2),
        window_size=(8, 8, 4, 2), drop_path_rate=0.0, out_indices=(2, 3)),
        (77, 93)),
}


def build(name: str, **overrides) -> torch.nn.Module:
    """The seeded model of case ``name`` (kwargs may be overridden)."""
    import mmvim.models as models
    cls_name, kwargs, _ = CASES[name]
    torch.manual_seed(0)
    return getattr(models, cls_name)(**dict(kwargs, **overrides))


def compute(name: str, **overrides) -> Dict[str, object]:
    """Eval-mode outputs and train-mode gradient norms of case ``name``."""
    model = build(name, **overrides)
    h, w = CASES[name][2]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, h, w, generator=g)
    model.eval()
    with torch.no_grad():
        outs = [o.clone() for o in model(x)]
    model.train()
    xg = x.clone().requires_grad_(True)
    train_outs = model(xg)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum()
               for o in train_outs)
    loss.backward()
    grads = torch.stack([p.grad.norm() for p in model.parameters()
                         if p.grad is not None])
    return dict(outputs=outs, input_grad_norm=xg.grad.norm().item(),
                param_grad_norms=grads)


def compute_all() -> Dict[str, Dict[str, object]]:
    return {name: compute(name) for name in CASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--write', action='store_true',
                        help=f'(re)write {STORE}')
    args = parser.parse_args()
    if os.environ.get('MMVIM_SCAN_BACKEND') != 'torch':
        parser.error('run with MMVIM_SCAN_BACKEND=torch (the stored values '
                     'are the torch backend\'s)')
    torch.set_num_threads(1)
    results = compute_all()
    for name, res in results.items():
        print(name, [tuple(o.shape) for o in res['outputs']],
              f'input grad norm {res["input_grad_norm"]:.6g}',
              f'{len(res["param_grad_norms"])} parameter grads')
    if args.write:
        torch.save(results, STORE)
        print(f'wrote {STORE} ({osp.getsize(STORE)} bytes)')


if __name__ == '__main__':
    main()
