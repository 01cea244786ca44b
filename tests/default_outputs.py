"""Stored outputs of the default backbones, to prove that defaults stay
unchanged (``tests/test_scan_routes.py``).

Small seeded Vim, VMamba and MambaVision models (reduced depth and width,
odd input sizes) run once in eval mode (the outputs) and once in train mode
with a backward (the gradient norm of the input and of every parameter,
in ``named_parameters`` order).
``tests/data/default_outputs.pt`` holds what this code computed BEFORE scan
routes were added (commit ae016d2, torch backend); the test recomputes it
with the current code and compares to float32 round-off, with tolerances
that scale with the tensors (any x86-64 CPU rounds differently). Gradients
that vanish analytically (:func:`batchnorm_fed_biases`) hold only the
round-off of the machine that computed them: the test asserts that they are
small against the gradient scale and never compares them to the stored
values. Regenerate only for a deliberate change of the default models:

    MMVIM_SCAN_BACKEND=torch PYTHONPATH=$PWD python tests/default_outputs.py --write
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Dict, List, Set

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


def batchnorm_fed_biases(model: torch.nn.Module,
                         x: torch.Tensor) -> Set[str]:
    """Names of the parameters whose gradient vanishes analytically in
    train mode: the bias of a module (conv, linear) whose output goes
    straight into a BatchNorm in train mode, which subtracts the batch mean
    of every channel and with it any per-channel constant. Found by running
    ``model`` on ``x`` with hooks (no names or architecture assumed)."""
    producers: Dict[int, tuple] = {}  # id(output) -> (name, output)
    found: Set[str] = set()

    def record(name):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                producers[id(out)] = (name, out)  # keeps `out` alive
        return hook

    def check(module, args):
        hit = producers.get(id(args[0])) if args else None
        if module.training and hit is not None and hit[1] is args[0]:
            found.add(f'{hit[0]}.bias')

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(check))
        elif isinstance(getattr(module, 'bias', None), torch.nn.Parameter):
            handles.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def compute(name: str, **overrides) -> Dict[str, object]:
    """Eval-mode outputs and train-mode gradient norms of case ``name``
    (``grad_names`` names the entries of ``param_grad_norms``;
    ``vanishing`` the parameters whose gradient is zero analytically)."""
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
    with_grad = [(n, p) for n, p in model.named_parameters()
                 if p.grad is not None]
    grads = torch.stack([p.grad.norm() for _, p in with_grad])
    # one more train-mode forward, once the gradients are taken
    vanishing = batchnorm_fed_biases(model, x)
    return dict(outputs=outs, input_grad_norm=xg.grad.norm().item(),
                param_grad_norms=grads,
                grad_names=[n for n, _ in with_grad],
                vanishing=vanishing)


def stored_keys() -> List[str]:
    """The entries of the stored file (what ``--write`` keeps)."""
    return ['outputs', 'input_grad_norm', 'param_grad_norms']


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
    results = {name: {k: res[k] for k in stored_keys()}
               for name, res in compute_all().items()}
    for name, res in results.items():
        print(name, [tuple(o.shape) for o in res['outputs']],
              f'input grad norm {res["input_grad_norm"]:.6g}',
              f'{len(res["param_grad_norms"])} parameter grads')
    if args.write:
        torch.save(results, STORE)
        print(f'wrote {STORE} ({osp.getsize(STORE)} bytes)')


if __name__ == '__main__':
    main()
