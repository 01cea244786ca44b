"""The ``triton`` backend of :func:`mmvim.ops.causal_conv1d`: forward and
backward Triton kernels, compiled at run time.

Contract of causal-conv1d's ``causal_conv1d_fn`` as mmvim uses it: ``x``
(batch, dim, L) in any layout (strides are passed to the kernels),
``weight`` (dim, width) with width 2 to 4, ``bias`` (dim,) or None, SiLU
optional. As causal-conv1d does, ``x`` may be float16 / bfloat16 with a
float32 weight (AMP): the sum and the SiLU are computed in float32 (float64
for float64 inputs), the output has ``x``'s dtype, and each gradient its
input's dtype.

Kernels: the forward is a grid of (BLOCK_L steps, BLOCK_D channels, batch)
tiles, ``width`` shifted loads each. The backward recomputes the
pre-activation where it needs it (no activation is kept): for a tile of
steps s, ``dx[s] = sum_k w[k] g[s + width-1-k]`` with ``g = dout *
silu'(pre)``. Its grid is (time split, channel block, batch); a program
walks its part of the sequence in BLOCK_L steps and keeps the sums of
``dweight`` and ``dbias`` over it in registers, written per (batch, split),
then summed by torch in a fixed order (deterministic; the number of splits
is chosen on the host, so the partial buffer does not depend on the tuned
block sizes).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_utils import (
    autotune,
    check_device,
    check_launch,
    compute_dtype,
    configs,
    rounded,
    tl_dtype,
)

__all__ = ['causal_conv1d_triton']

# autotuned block sizes (the first: MMVIM_TRITON_AUTOTUNE=0); under the
# interpreter one large block
_INTERPRET = [(dict(BLOCK_D=256, BLOCK_L=64), 1)]
_FWD = [(dict(BLOCK_D=d, BLOCK_L=t), w)
        for d, t in ((16, 64), (4, 256), (8, 128), (16, 128), (32, 64))
        for w in (4, 2)]
_BWD = [(dict(BLOCK_D=d, BLOCK_L=t), w)
        for d, t in ((8, 128), (16, 64), (4, 256), (32, 32)) for w in (4, 2)]
FWD_CONFIGS = configs(_FWD, _INTERPRET, _FWD[0])
BWD_CONFIGS = configs(_BWD, _INTERPRET, _BWD[0])


def default_config(kernel, nargs: dict, **kw):
    """The config ``MMVIM_TRITON_AUTOTUNE=0`` runs (the first candidate)."""
    return kernel.configs[0]


# backward: time splits so that the grid has at least this many programs
MIN_PROGRAMS = 1024
MAX_SPLITS = 64


@triton.jit
def _pre_activation(x_base, w_row, bias, t, dmask, L, s_xd, s_xl, s_wk,
                    d, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr,
                    COMPUTE: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_L: tl.constexpr):
    """bias + sum_k w[k] x[t - (WIDTH-1) + k] on a (BLOCK_D, BLOCK_L) tile
    of positions t (zero left padding)."""
    acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=COMPUTE)
    for k in tl.static_range(WIDTH):
        src = t - (WIDTH - 1) + k
        xv = tl.load(x_base + d[:, None] * s_xd + src[None, :] * s_xl,
                     mask=dmask[:, None] & ((src >= 0) & (src < L))[None, :],
                     other=0.0).to(COMPUTE)
        wk = tl.load(w_row + k * s_wk, mask=dmask, other=0.0).to(COMPUTE)
        acc += wk[:, None] * xv
    if HAS_BIAS:
        acc += bias[:, None]
    return acc


@autotune(FWD_CONFIGS, ['dim', 'L', 'WIDTH'])
@triton.jit
def _fwd_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, dim, L,
                s_xb, s_xd, s_xl, s_wd, s_wk, s_ob, s_od, s_ol,
                WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr,
                SILU: tl.constexpr, COMPUTE: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    dmask = d < dim
    bias = tl.zeros([BLOCK_D], dtype=COMPUTE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    acc = _pre_activation(x_ptr + b * s_xb, w_ptr + d * s_wd, bias, t, dmask,
                          L, s_xd, s_xl, s_wk, d, WIDTH, HAS_BIAS, COMPUTE,
                          BLOCK_D, BLOCK_L)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol,
             rounded(acc, out_ptr),
             mask=dmask[:, None] & (t < L)[None, :])


@autotune(BWD_CONFIGS, ['dim', 'L', 'WIDTH', 'span'])
@triton.jit
def _bwd_kernel(x_ptr, w_ptr, bias_ptr, dout_ptr, dx_ptr, dw_ptr, db_ptr,
                dim, L, span,
                s_xb, s_xd, s_xl, s_wd, s_wk, s_gb, s_gd, s_gl,
                s_dxb, s_dxd, s_dxl, s_pb, s_ps, s_qb, s_qs,
                WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr,
                SILU: tl.constexpr, COMPUTE: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    split = tl.program_id(0)
    b = tl.program_id(2).to(tl.int64)
    d = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    dmask = d < dim
    x_base = x_ptr + b * s_xb
    w_row = w_ptr + d * s_wd
    bias = tl.zeros([BLOCK_D], dtype=COMPUTE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    dw0 = tl.zeros([BLOCK_D], dtype=COMPUTE)
    dw1 = tl.zeros([BLOCK_D], dtype=COMPUTE)
    dw2 = tl.zeros([BLOCK_D], dtype=COMPUTE)
    dw3 = tl.zeros([BLOCK_D], dtype=COMPUTE)
    db = tl.zeros([BLOCK_D], dtype=COMPUTE)
    start = split * span
    end = tl.minimum(start + span, L)
    for t0 in range(start, end, BLOCK_L):
        s = t0 + tl.arange(0, BLOCK_L)
        dx = tl.zeros([BLOCK_D, BLOCK_L], dtype=COMPUTE)
        for j in tl.static_range(WIDTH):
            # g at t = s + j reaches dx[s] through w[WIDTH-1-j]
            t = s + j
            tmask = dmask[:, None] & (t < L)[None, :]
            g = tl.load(dout_ptr + b * s_gb + d[:, None] * s_gd
                        + t[None, :] * s_gl, mask=tmask,
                        other=0.0).to(COMPUTE)
            if SILU:
                pre = _pre_activation(x_base, w_row, bias, t, dmask, L,
                                      s_xd, s_xl, s_wk, d, WIDTH, HAS_BIAS,
                                      COMPUTE, BLOCK_D, BLOCK_L)
                sig = tl.sigmoid(pre)
                g = g * sig * (1.0 + pre * (1.0 - sig))
            wj = tl.load(w_row + (WIDTH - 1 - j) * s_wk, mask=dmask,
                         other=0.0).to(COMPUTE)
            dx += wj[:, None] * g
            if j == 0:
                # this tile's own outputs: weight and bias sums over it
                g = tl.where((s < end)[None, :], g, 0.0)
                db += tl.sum(g, axis=1)
                for k in tl.static_range(WIDTH):
                    src = s - (WIDTH - 1) + k
                    xv = tl.load(x_base + d[:, None] * s_xd
                                 + src[None, :] * s_xl,
                                 mask=dmask[:, None]
                                 & ((src >= 0) & (src < L))[None, :],
                                 other=0.0).to(COMPUTE)
                    part = tl.sum(g * xv, axis=1)
                    if k == 0:
                        dw0 += part
                    elif k == 1:
                        dw1 += part
                    elif k == 2:
                        dw2 += part
                    else:
                        dw3 += part
        tl.store(dx_ptr + b * s_dxb + d[:, None] * s_dxd
                 + s[None, :] * s_dxl, rounded(dx, dx_ptr),
                 mask=dmask[:, None] & (s < end)[None, :])
    p_base = b * s_pb + split * s_ps + d * WIDTH
    tl.store(dw_ptr + p_base, dw0, mask=dmask)
    tl.store(dw_ptr + p_base + 1, dw1, mask=dmask)
    if WIDTH > 2:
        tl.store(dw_ptr + p_base + 2, dw2, mask=dmask)
    if WIDTH > 3:
        tl.store(dw_ptr + p_base + 3, dw3, mask=dmask)
    if HAS_BIAS:
        tl.store(db_ptr + b * s_qb + split * s_qs + d, db, mask=dmask)


def _splits(batch: int, dim: int, length: int) -> int:
    """Time splits of the backward grid: enough programs to fill a GPU
    (counting channel blocks of 16), at most one per 64 steps."""
    blocks = batch * triton.cdiv(dim, 16)
    want = triton.cdiv(MIN_PROGRAMS, blocks)
    return max(1, min(want, MAX_SPLITS, triton.cdiv(length, 64)))


class _CausalConv1dTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                silu: bool) -> Tensor:
        batch, dim, length = x.shape
        width = weight.shape[1]
        cdt = compute_dtype(x)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)

        def grid(meta):
            return (triton.cdiv(length, meta['BLOCK_L']),
                    triton.cdiv(dim, meta['BLOCK_D']), batch)
        _fwd_kernel[grid](
            x, weight, x if bias is None else bias, out, dim, length,
            *x.stride(), *weight.stride(), *out.stride(), WIDTH=width,
            HAS_BIAS=bias is not None, SILU=silu, COMPUTE=tl_dtype(cdt))
        ctx.silu = silu
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, weight, bias = ctx.saved_tensors
        batch, dim, length = x.shape
        width = weight.shape[1]
        cdt = compute_dtype(x)
        splits = _splits(batch, dim, length)
        span = triton.cdiv(length, splits)
        splits = triton.cdiv(length, span)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dw = torch.empty(batch, splits, dim, width, dtype=cdt,
                         device=x.device)
        db = torch.empty(batch, splits, dim, dtype=cdt, device=x.device) \
            if bias is not None else dw

        def grid(meta):
            return (splits, triton.cdiv(dim, meta['BLOCK_D']), batch)
        _bwd_kernel[grid](
            x, weight, x if bias is None else bias, dout, dx, dw, db,
            dim, length, span, *x.stride(), *weight.stride(),
            *dout.stride(), *dx.stride(), dw.stride(0), dw.stride(1),
            db.stride(0), db.stride(1), WIDTH=width,
            HAS_BIAS=bias is not None, SILU=ctx.silu, COMPUTE=tl_dtype(cdt))
        dweight = dw.sum((0, 1)).to(weight.dtype)
        dbias = None if bias is None else db.sum((0, 1)).to(bias.dtype)
        return dx, dweight, dbias, None


def causal_conv1d_triton(x: Tensor, weight: Tensor,
                         bias: Optional[Tensor] = None,
                         activation: Optional[str] = None) -> Tensor:
    """Triton causal depthwise conv1d (+ SiLU); the contract of
    :func:`mmvim.ops.causal_conv1d` (arguments checked there)."""
    check_device('causal_conv1d', x, weight, bias)
    width = weight.shape[1]
    # grid: (time blocks, channel blocks of at least 4, batch); time
    # offsets (t * stride) are 32-bit, batch and channel ones 64-bit
    check_launch('causal_conv1d', dict(batch=x.shape[0],
                                       channel_blocks=-(-x.shape[1] // 4)),
                 dict(time=(x.shape[2] + width) * abs(x.stride(2))))
    if not 2 <= width <= 4:
        raise ValueError(f'causal_conv1d (triton backend): width must be 2 '
                         f'to 4 (as causal-conv1d), got {width}')
    return _CausalConv1dTriton.apply(x, weight, bias,
                                     activation in ('silu', 'swish'))
