"""The selective_scan / causal_conv1d calls the backbones make, captured
from one forward: what the parity and speed phases replay with every
backend, and what tools/triton_aot.py compiles (shapes, strides, storage
offsets and dtypes exactly as the models pass them)."""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

OPS = ('selective_scan', 'causal_conv1d')
# --tiny: one small model per family
TINY_BACKBONES = {
    'vim_t': dict(depth=2, embed_dims=32, out_indices=(0, 1)),
    'vim_s': dict(depth=2, embed_dims=32, out_indices=(0, 1)),
    'vmamba_t': dict(dims=16, depths=(1, 1, 1, 1)),
    'mambavision_t': dict(dim=16, in_dim=8, depths=(1, 1, 3, 2),
                          num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2)),
}
# the backbones the kernels are measured on (mmvim preset name: class, kwargs)
BACKBONES = {
    'vim_t': ('Vim', dict(arch='tiny', out_indices=(5, 11, 17, 23))),
    'vim_s': ('Vim', dict(arch='small', out_indices=(5, 11, 17, 23))),
    'vmamba_t': ('VMamba', dict(arch='tiny')),
    'mambavision_t': ('MambaVision', dict(arch='T')),
}


class TensorSpec:
    """Shape, strides, storage offset and dtype of a tensor argument: enough
    to make one that a kernel launch specializes on in the same way (the
    alignment of its address included)."""

    def __init__(self, t) -> None:
        self.shape = tuple(t.shape)
        self.stride = tuple(t.stride())
        self.offset = t.storage_offset()
        self.dtype = t.dtype

    def make(self, dtype=None, device: str = 'cpu', fill: bool = True):
        import torch
        dtype = dtype or self.dtype
        extent = 1 + self.offset + sum((n - 1) * s for n, s in
                                       zip(self.shape, self.stride))
        base = torch.randn(extent, device=device).to(dtype) if fill else \
            torch.empty(extent, dtype=dtype, device=device)
        return base.as_strided(self.shape, self.stride, self.offset)

    def __repr__(self) -> str:
        return f'TensorSpec({self.shape}, {self.stride}, {self.dtype})'


class Capture:
    """Records the arguments of the first call of every distinct signature
    of :data:`OPS` the models make, by wrapping the names the model layers
    imported. ``compute=False`` records :class:`TensorSpec` s and returns
    zeros instead of running the op (fast: only the layout is wanted);
    otherwise tensors are cloned and the op runs."""

    def __init__(self, compute: bool = True,
                 reverses_in_kernel: Optional[bool] = None) -> None:
        self.compute = compute
        self.reverses = reverses_in_kernel
        self.calls: Dict[tuple, Tuple[str, list, dict]] = {}

    @staticmethod
    def signature(op: str, args, kwargs) -> tuple:
        def sig(v):
            if hasattr(v, 'shape'):
                return (tuple(v.shape), tuple(v.stride()), str(v.dtype))
            return v
        return (op, tuple(sig(a) for a in args),
                tuple(sorted((k, sig(v)) for k, v in kwargs.items())))

    def _keep(self, v):
        if not hasattr(v, 'detach'):
            return v
        return v.detach().clone() if self.compute else TensorSpec(v)

    def wrap(self, op: str, fn):
        def recorder(*args, **kwargs):
            key = self.signature(op, args, kwargs)
            if key not in self.calls:
                self.calls[key] = (op, [self._keep(a) for a in args],
                                   {k: self._keep(v)
                                    for k, v in kwargs.items()})
            if self.compute:
                return fn(*args, **kwargs)
            import torch
            out = torch.zeros_like(args[0])
            if op == 'selective_scan' and kwargs.get('return_last_state'):
                batch, dim = args[0].shape[:2]
                return out, out.new_zeros(batch, dim, args[2].shape[1])
            return out
        return recorder

    def __enter__(self) -> Capture:
        import mmvim.ops as ops
        self.patched = []
        for name, mod in list(sys.modules.items()):
            if not name.startswith('mmvim.models') or mod is None:
                continue
            for op in OPS:
                if getattr(mod, op, None) is getattr(ops, op):
                    self.patched.append((mod, op, getattr(ops, op)))
                    setattr(mod, op, self.wrap(op, getattr(ops, op)))
            # what the mixers ask before flipping reversed routes: the
            # answer the triton backend gives on a GPU (ahead-of-time
            # capture on CPU, where no kernel runs)
            name = 'scan_reverses_in_kernel'
            if self.reverses is not None and hasattr(mod, name):
                self.patched.append((mod, name, getattr(mod, name)))
                setattr(mod, name, lambda x, _v=self.reverses: _v)
        return self

    def __exit__(self, *exc) -> None:
        for mod, name, value in self.patched:
            setattr(mod, name, value)


def build_backbone(name: str, size: int, tiny: bool = False, **overrides):
    """Backbone ``name`` of :data:`BACKBONES` for ``size`` x ``size``
    images, stochastic depth off (the measurements compare backends on
    the same function)."""
    import mmvim.models.backbones as backbones
    cls_name, kwargs = BACKBONES[name]
    kwargs = dict(kwargs, **(TINY_BACKBONES[name] if tiny else {}),
                  **overrides)
    if cls_name == 'Vim':
        kwargs['img_size'] = size
    kwargs.setdefault('drop_path_rate', 0.0)
    return getattr(backbones, cls_name)(**kwargs)


def kernel_calls(name: str, size: int, batch: int = 1, device: str = 'cpu',
                 tiny: bool = False, compute: bool = True,
                 reverses_in_kernel: Optional[bool] = None
                 ) -> List[Tuple[str, list, dict]]:
    """The distinct selective_scan / causal_conv1d calls of one forward of
    backbone ``name`` on a (batch, 3, size, size) image: (op, args,
    kwargs), tensors cloned (``compute``) or as :class:`TensorSpec`;
    ``reverses_in_kernel`` overrides what the mixers are told about the
    backend's ``reverse`` support. With ``compute=False`` the device may
    be 'meta' (layouts only, no arithmetic: the same calls, faster)."""
    import torch
    torch.manual_seed(0)
    model = build_backbone(name, size, tiny).to(device).eval()
    with Capture(compute, reverses_in_kernel) as cap, torch.no_grad():
        model(torch.randn(batch, 3, size, size, device=device))
    del model
    return list(cap.calls.values())


def describe(op: str, args: list, kwargs: Dict[str, Any]) -> dict:
    """Shape facts of a captured call, for reports."""
    if op == 'causal_conv1d':
        return dict(op=op, x=list(args[0].shape), width=args[1].shape[1])
    u, B, C = args[0], args[3], args[4]

    def kind(m):
        return ('const' if len(m.shape) == 2 else 'var' if len(m.shape) == 3
                else f'group{m.shape[1]}')
    rev = kwargs.get('reverse')
    z = args[6] if len(args) > 6 else kwargs.get('z')
    d = args[5] if len(args) > 5 else kwargs.get('D')
    return dict(op=op, batch=u.shape[0], dim=u.shape[1],
                d_state=args[2].shape[1], L=u.shape[2], B=kind(B), C=kind(C),
                z=z is not None, D=d is not None,
                reverse=None if rev is None else [bool(r) for r in rev])
