"""The ``triton`` backend of :func:`mmvim.ops.selective_scan`: forward and
backward Triton kernels, compiled at run time (nothing to build).

Same contract and numerics as the other backends: constant (dim, N),
(batch, N, L) and grouped (batch, G, N, L) B / C (each its own kind), D, z,
delta_bias and softplus (threshold 20) each optional, ``return_last_state``,
``reverse`` read in the kernel; any L, d_state and dim. float32, float16 and
bfloat16 inputs are computed in float32 (every intermediate of the
recurrence and of its adjoint, and every accumulated gradient), float64 in
float64; only inputs and outputs are rounded, gradients come back in each
input's dtype.

Kernel design
-------------
* Work items: the channels are cut into *units* (the lcm of B's groups,
  C's groups and the ``reverse`` blocks, so one unit has one B group, one C
  group and one direction) and each unit into blocks of ``BLOCK_D``
  channels; the grid is (channel block, unit, batch). A program works on
  (BLOCK_D channels, BLOCK_L steps) tiles and loops over the states n, as
  mamba-ssm's kernel does, so any d_state runs without padding; the
  per-state values carried from chunk to chunk (states, adjoints, sums of
  dA / dB / dC) sit in (BLOCK_D, next_pow2(N)) register tiles.
* Time runs in chunks of ``BLOCK_L`` steps. In a chunk the recurrence of
  state n, ``h[t] = exp(delta[t] A[:, n]) h[t-1] + delta[t] u[t] B[t, n]``,
  is one ``tl.associative_scan`` of (decay, input) pairs along time (the
  state entering the chunk folded into the first input): only products of
  decays, never divisions by them, so nothing overflows for any
  ``delta * |A|``. ``y = sum_n C h`` accumulates over n; ``+ D u`` and
  ``* silu(z)`` follow. Reversed units map logical step j to ``L-1-j`` in
  every load and store.
* The forward keeps, when gradients are needed, the state entering every
  chunk, (batch, L / BLOCK_L, N, dim), and with z the gate's input y
  (batch, dim, L, float32): memory linear in L, never (batch, dim, N, L).
* The backward walks the chunks from the last. Per state it recomputes the
  chunk's states from the kept one (the same scan), then solves the
  adjoint ``g[t] = C[t] dy[t] + exp(delta[t+1] A) g[t+1]`` with one reverse
  ``associative_scan`` (a three-component combine carries the decay of the
  next step, so no shifted copy is needed) and carries ``exp(delta[t0] A)
  g[t0]`` into the previous chunk. ``a[t] h[t-1]`` is ``h[t] - x[t]``, as in
  mamba-ssm's kernel.
* Reductions are deterministic: per-channel sums over time (dA, constant
  dB / dC, dD, d delta_bias) stay in the program's registers and are
  written per (batch, channel); sums over channels (time-varying dB / dC)
  are written per (batch, unit, channel block, N, L), (dim / BLOCK_D) N L
  values a batch (BLOCK_D >= 16: at most u's size for d_state <= 16).
  torch sums these partial buffers in a fixed order. There is no atomic
  mode (it could only be justified by a GPU measurement).
* ``BLOCK_D`` and ``BLOCK_L`` are ``triton.autotune`` configs (num_warps
  follows the tile size), timed on the first call of every shape; the
  backward uses the forward's ``BLOCK_L`` (its kept states are per chunk)
  and tunes its own ``BLOCK_D``. Buffers whose size depends on them are
  sized for the smallest candidate and read up to what ran.
  ``MMVIM_TRITON_AUTOTUNE=0`` takes one size per shape instead (the tile
  nearest 2048 elements), which skips the tuning runs. Under the
  interpreter one tile per shape too (:func:`interpret_blocks`).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_utils import (
    AUTOTUNE,
    INTERPRET,
    autotune,
    check_device,
    check_launch,
    compute_dtype,
    configs,
    launched_config,
    next_pow2,
    rounded,
    tl_dtype,
    with_warps,
)

__all__ = ['selective_scan_triton', 'MAX_DSTATE']

#: the largest d_state the kernels take (mamba-ssm's CUDA scan: 256)
MAX_DSTATE = 256

# Block sizes the autotuner tries: tiles of BLOCK_D channels x BLOCK_L steps
# with TILE_MIN..TILE_MAX elements; num_warps follows the tile (4 up to 2048
# elements, else 8). BLOCK_D >= 16 bounds the backward's partial sums of a
# time-varying B / C: (dim / BLOCK_D) * N * L, at most u's size for N <= 16.
TILE_MIN, TILE_MAX = 1024, 4096
# The default tiles (MMVIM_TRITON_AUTOTUNE=0, and what tools/triton_aot.py
# checks): the forward's nearest TILE_GUESS elements, the backward's
# (which holds about twice as many tiles per step) nearest TILE_GUESS_BWD,
# chunks nearest 64 steps: 32 x 64 and 16 x 64 at 8 warps compile without
# spilling for every model call, contract corner and dtype on sm_80 and
# sm_90, where 4 warps or wider backward tiles spill (docs/triton.md)
TILE_GUESS, TILE_GUESS_BWD = 2048, 1024
_BLOCK_L = (16, 32, 64, 128, 256)
_BLOCK_D = (16, 32, 64, 128)
# Under the interpreter, whose cost is per operation far more than per
# element: one tile per shape, as few programs and chunks as practical.
# BLOCK_D just covers a unit (16..256 channels); BLOCK_L covers the
# sequence up to INTERPRET_TILE / BLOCK_D steps, at most INTERPRET_MAX_L
# (512 steps for units of up to 64 channels, 128 for units of 256).
INTERPRET_TILE, INTERPRET_MAX_L = 32768, 512
_INTERPRET_D = (16, 32, 64, 128, 256)
_INTERPRET_L = (16, 32, 64, 128, 256, 512)


def interpret_blocks(per_unit: int, length: int) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_L) the interpreter runs for units of ``per_unit``
    channels and sequences of ``length`` steps."""
    block_d = min(max(next_pow2(per_unit), _INTERPRET_D[0]), _INTERPRET_D[-1])
    block_l = min(INTERPRET_MAX_L, INTERPRET_TILE // block_d,
                  max(next_pow2(length), _INTERPRET_L[0]))
    return block_d, block_l


FWD_CONFIGS = configs(
    [(dict(BLOCK_D=d, BLOCK_L=t), 0) for t in _BLOCK_L for d in _BLOCK_D],
    [(dict(BLOCK_D=d, BLOCK_L=t), 1) for t in _INTERPRET_L
     for d in _INTERPRET_D])
BWD_CONFIGS = configs([(dict(BLOCK_D=d), 0) for d in _BLOCK_D],
                      [(dict(BLOCK_D=d), 1) for d in _INTERPRET_D])


def _prune(cands, per_unit: int, block_l: Optional[int],
           autotune: Optional[bool] = None):
    """The candidates to time for one shape: tiles of TILE_MIN..TILE_MAX
    elements with no more channels than a unit has (else the smallest
    BLOCK_D), each with num_warps set for its tile. With autotuning off
    (``autotune``, :data:`AUTOTUNE` by default) only the one nearest
    TILE_GUESS (backward: TILE_GUESS_BWD) elements: the *default* config
    of the shape."""
    def steps(c):
        return block_l or c.kwargs['BLOCK_L']

    def tile(c):
        return c.kwargs['BLOCK_D'] * steps(c)
    narrow = min(c.kwargs['BLOCK_D'] for c in cands)
    limit = max(narrow, next_pow2(per_unit))
    usable = [c for c in cands if c.kwargs['BLOCK_D'] <= limit]
    kept = [c for c in usable if TILE_MIN <= tile(c) <= TILE_MAX]
    guess = TILE_GUESS_BWD if block_l else TILE_GUESS
    if not kept:  # nothing in range: the tiles nearest to it
        def gap(c):
            return abs(math.log2(tile(c) / guess))
        best = min(gap(c) for c in usable)
        kept = [c for c in usable if gap(c) == best]
    if not (AUTOTUNE if autotune is None else autotune):
        kept = [min(kept, key=lambda c: (abs(math.log2(tile(c) / guess)),
                                         abs(steps(c) - 64)))]
    # num_warps: 8 from 1024 elements (4 spill there), 4 below
    return [with_warps(c, 4 if tile(c) < 1024 else 8) for c in kept]


def _for_shape(cands, per_unit: int, length: int, block_l: Optional[int]):
    """The candidates for one shape: :func:`_prune`'s on a GPU, the one
    tile of :func:`interpret_blocks` under the interpreter (the backward's
    BLOCK_L is the forward's)."""
    if not INTERPRET:
        return _prune(cands, per_unit, block_l)
    block_d, steps = interpret_blocks(per_unit, length)
    return [c for c in cands if c.kwargs['BLOCK_D'] == block_d
            and c.kwargs.get('BLOCK_L', steps) == steps]


def _prune_fwd(cands, nargs, **kw):
    return _for_shape(cands, nargs['per_unit'], nargs['L'], None)


def _prune_bwd(cands, nargs, **kw):
    # BLOCK_L is the forward's (a keyword argument of the launch)
    return _for_shape(cands, nargs['per_unit'], nargs['L'],
                      kw.get('BLOCK_L', 64))


def default_config(kernel, nargs: dict, **kw):
    """The config ``MMVIM_TRITON_AUTOTUNE=0`` runs for this launch of
    ``_fwd_kernel`` / ``_bwd_kernel`` on a GPU (tools/triton_aot.py checks
    that it compiles without spilling)."""
    block_l = kw.get('BLOCK_L') if kernel is _bwd_kernel else None
    return _prune(kernel.configs, nargs['per_unit'], block_l,
                  autotune=False)[0]


# ---------------------------------------------------------------- device ---
@triton.jit
def _scan_combine(a_l, x_l, a_r, x_r):
    """(decay, input) pairs, earlier (l) then later (r):
    h = a_r (a_l h0 + x_l) + x_r."""
    return a_l * a_r, a_r * x_l + x_r


@triton.jit
def _adjoint_combine(f_r, ga_r, gb_r, f_l, ga_l, gb_l):
    """Reverse scan of the adjoint g[t] = b[t] + a[t+1] g[t+1]. A segment
    [s, e] is (a[s], G_a, G_b) with g[s] = G_b + G_a * a[e+1] g[e+1]; one
    step t starts as (a[t], 1, b[t]). In a reverse scan the first argument
    is the later segment (r), the second the earlier one (l)."""
    w = ga_l * f_r
    return f_l, w * ga_r, gb_l + w * gb_r


@triton.jit
def _softplus(v):
    """log1p(exp(v)) for v <= 20, v above (mamba-ssm's threshold); log1p
    computed as log(w) * e / (w - 1), exact where w = 1 + e rounds."""
    e = tl.exp(tl.minimum(v, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(v <= 20.0, lp, v)


@triton.jit
def _column(mat, ncol, n):
    """Column n of a (BLOCK_D, N_PAD) register tile."""
    return tl.sum(tl.where(ncol[None, :] == n, mat, 0.0), axis=1)


@triton.jit
def _program(per_unit, N, b_units, c_units, r_units, bias_ptr, rev_ptr,
             s_bb, s_bg, s_cb, s_cg, HAS_BIAS: tl.constexpr,
             HAS_REV: tl.constexpr, COMPUTE: tl.constexpr,
             N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_L: tl.constexpr):
    """What a program works on: its batch element b, channels d (and their
    mask), the state columns, the offsets of its B / C group, its
    delta_bias and whether its unit runs backwards."""
    unit = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    ci = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ci < per_unit
    d = (unit * per_unit + ci).to(tl.int64)
    ncol = tl.arange(0, N_PAD)
    dn_mask = dmask[:, None] & (ncol < N)[None, :]
    b_base = b * s_bb + (unit // b_units).to(tl.int64) * s_bg
    c_base = b * s_cb + (unit // c_units).to(tl.int64) * s_cg
    bias = tl.zeros([BLOCK_D], dtype=COMPUTE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    rev = unit < 0  # a false scalar: the same type in both cases
    if HAS_REV:
        rev = tl.load(rev_ptr + unit // r_units) != 0
    return (unit, b, d, dmask, ncol, dn_mask, tl.arange(0, BLOCK_L), b_base,
            c_base, bias, rev)


@triton.jit
def _chunk_steps(c, L, rev, jj, HAS_REV: tl.constexpr, BLOCK_L: tl.constexpr):
    """Logical steps j of chunk c, their mask and the time index they
    read (t = L - 1 - j in a reversed unit)."""
    j = c * BLOCK_L + jj
    tmask = j < L
    if HAS_REV:
        t = tl.where(rev, L - 1 - j, j)
    else:
        t = j
    return tmask, t


@triton.jit
def _step_sizes(dt_ptr, bias, offs, mask, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, COMPUTE: tl.constexpr):
    """(raw, delta): delta (+ bias) before and after softplus; 0 on padded
    lanes (decay 1, input 0: the state passes unchanged)."""
    raw = tl.load(dt_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    if SOFTPLUS:
        dtv = _softplus(raw)
    else:
        dtv = raw
    return raw, tl.where(mask, dtv, 0.0)


@triton.jit
def _bc_row(ptr, base, d, n, t, dmask, tmask, s_d, s_n, s_l, VAR: tl.constexpr,
            COMPUTE: tl.constexpr):
    """B or C of state n as a (BLOCK_D, 1) column (constant) or a
    (1, BLOCK_L) row (time-varying, one group per unit). Each shape is
    returned from its own branch of the constexpr ``if``: the compiler
    types the code after an ``if`` that returns as reachable, so a return
    after it with another shape fails to compile ("Inconsistent return
    types"; the interpreter never sees it)."""
    if VAR:
        row = tl.load(ptr + base + n * s_n + t * s_l, mask=tmask, other=0.0)
        return row.to(COMPUTE)[None, :]
    else:
        col = tl.load(ptr + d * s_d + n * s_n, mask=dmask, other=0.0)
        return col.to(COMPUTE)[:, None]


@autotune(FWD_CONFIGS, ['L', 'N', 'per_unit', 'B_VAR', 'C_VAR', 'HAS_Z',
                        'STORE_STATES'], _prune_fwd)
@triton.jit
def _fwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, rev_ptr,
        out_ptr, last_ptr, states_ptr, ypre_ptr,
        L, N, per_unit, b_units, c_units, r_units,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_ad, s_an,
        s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl, s_ob, s_od, s_ol,
        s_sb, s_sc, s_sn, s_lb, s_ld, s_yb, s_yd,
        B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_REV: tl.constexpr, STORE_STATES: tl.constexpr,
        COMPUTE: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr):
    (unit, b, d, dmask, ncol, dn_mask, jj, b_base, c_base, bias,
     rev) = _program(per_unit, N, b_units, c_units, r_units, bias_ptr,
                     rev_ptr, s_bb, s_bg, s_cb, s_cg, HAS_BIAS, HAS_REV,
                     COMPUTE, N_PAD, BLOCK_D, BLOCK_L)
    # the state of every n entering the chunk, column n = state n
    h_all = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    for c in range(0, tl.cdiv(L, BLOCK_L)):
        tmask, t = _chunk_steps(c, L, rev, jj, HAS_REV, BLOCK_L)
        mask = dmask[:, None] & tmask[None, :]
        if STORE_STATES:
            tl.store(states_ptr + b * s_sb + c * s_sc + ncol[None, :] * s_sn
                     + d[:, None], h_all, mask=dn_mask)
        uv = tl.load(u_ptr + b * s_ub + d[:, None] * s_ud + t[None, :] * s_ul,
                     mask=mask, other=0.0).to(COMPUTE)
        _, dtv = _step_sizes(dt_ptr, bias, b * s_tb + d[:, None] * s_td
                             + t[None, :] * s_tl, mask, HAS_BIAS, SOFTPLUS,
                             COMPUTE)
        dtu = dtv * uv
        y = tl.zeros([BLOCK_D, BLOCK_L], dtype=COMPUTE)
        for n in range(0, N):
            An = tl.load(A_ptr + d * s_ad + n * s_an, mask=dmask,
                         other=0.0).to(COMPUTE)
            a = tl.exp(dtv * An[:, None])
            x = dtu * _bc_row(B_ptr, b_base, d, n, t, dmask, tmask, s_bg,
                              s_bn, s_bl, B_VAR, COMPUTE)
            h0 = _column(h_all, ncol, n)
            x = tl.where(jj[None, :] == 0, x + a * h0[:, None], x)
            _, h = tl.associative_scan((a, x), 1, _scan_combine)
            y += h * _bc_row(C_ptr, c_base, d, n, t, dmask, tmask, s_cg,
                             s_cn, s_cl, C_VAR, COMPUTE)
            # padded steps kept the state: the last column is the new one
            h_end = tl.sum(tl.where(jj[None, :] == BLOCK_L - 1, h, 0.0), 1)
            h_all = tl.where(ncol[None, :] == n, h_end[:, None], h_all)
        if HAS_D:  # u again: not kept live through the loop over n
            Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
            uv = tl.load(u_ptr + b * s_ub + d[:, None] * s_ud
                         + t[None, :] * s_ul, mask=mask, other=0.0)
            y += Dv[:, None] * uv.to(COMPUTE)
        if HAS_Z:
            if STORE_STATES:  # the gate's input, for dz in the backward
                tl.store(ypre_ptr + b * s_yb + d[:, None] * s_yd + t[None, :],
                         y, mask=mask)
            zv = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd
                         + t[None, :] * s_zl, mask=mask, other=0.0)
            zv = zv.to(COMPUTE)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol,
                 rounded(y, out_ptr), mask=mask)
    tl.store(last_ptr + b * s_lb + d[:, None] * s_ld + ncol[None, :], h_all,
             mask=dn_mask)


@autotune(BWD_CONFIGS, ['L', 'N', 'per_unit', 'B_VAR', 'C_VAR', 'HAS_Z',
                        'BLOCK_L'], _prune_bwd)
@triton.jit
def _bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, rev_ptr,
        states_ptr, ypre_ptr, dout_ptr, dlast_ptr,
        du_ptr, ddt_ptr, dz_ptr, dA_ptr, dBc_ptr, dCc_ptr, dD_ptr, dbias_ptr,
        dBv_ptr, dCv_ptr,
        L, N, per_unit, b_units, c_units, r_units,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_ad, s_an,
        s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl,
        s_sb, s_sc, s_sn, s_gb, s_gd, s_gl, s_lb, s_ld, s_pb, s_pd, s_qb,
        s_vb, s_vu, s_vk, s_vn, s_yb, s_yd,
        B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_REV: tl.constexpr, HAS_DLAST: tl.constexpr,
        COMPUTE: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr):
    (unit, b, d, dmask, ncol, dn_mask, jj, b_base, c_base, bias,
     rev) = _program(per_unit, N, b_units, c_units, r_units, bias_ptr,
                     rev_ptr, s_bb, s_bg, s_cb, s_cg, HAS_BIAS, HAS_REV,
                     COMPUTE, N_PAD, BLOCK_D, BLOCK_L)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    # this program's part of the channel sums of a time-varying B / C
    v_base = b * s_vb + unit.to(tl.int64) * s_vu + tl.program_id(0) * s_vk
    # carry[:, n] = a[t0] g[t0] of the chunk after this one (dL/dh at its
    # end through later steps); the final one is dlast
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + b * s_lb + d[:, None] * s_ld
                        + ncol[None, :], mask=dn_mask, other=0.0)
        carry = carry.to(COMPUTE)
    else:
        carry = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dA_acc = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dB_acc = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dC_acc = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dD_acc = tl.zeros([BLOCK_D], dtype=COMPUTE)
    dbias_acc = tl.zeros([BLOCK_D], dtype=COMPUTE)
    ones = tl.full([BLOCK_D, BLOCK_L], 1.0, COMPUTE)
    nchunks = tl.cdiv(L, BLOCK_L)
    for cc in range(0, nchunks):
        c = nchunks - 1 - cc
        tmask, t = _chunk_steps(c, L, rev, jj, HAS_REV, BLOCK_L)
        mask = dmask[:, None] & tmask[None, :]
        # registers: what the loop over the states n carries is dtv, dtu,
        # dy and the two sums; u and the raw step are loaded again after
        # it (tools/triton_aot.py: no spills at the default tiles)
        u_off = b * s_ub + d[:, None] * s_ud + t[None, :] * s_ul
        dt_off = b * s_tb + d[:, None] * s_td + t[None, :] * s_tl
        uv = tl.load(u_ptr + u_off, mask=mask, other=0.0).to(COMPUTE)
        _, dtv = _step_sizes(dt_ptr, bias, dt_off, mask, HAS_BIAS, SOFTPLUS,
                             COMPUTE)
        dtu = dtv * uv
        g_off = b * s_gb + d[:, None] * s_gd + t[None, :] * s_gl
        dy = tl.load(dout_ptr + g_off, mask=mask, other=0.0).to(COMPUTE)
        if HAS_Z:
            # out = y * silu(z), y kept by the forward (float32)
            y = tl.load(ypre_ptr + b * s_yb + d[:, None] * s_yd + t[None, :],
                        mask=mask, other=0.0)
            zv = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd
                         + t[None, :] * s_zl, mask=mask, other=0.0)
            zv = zv.to(COMPUTE)
            sig = tl.sigmoid(zv)
            dz = dy * y * sig * (1.0 + zv * (1.0 - sig))
            tl.store(dz_ptr + g_off, rounded(dz, dz_ptr),
                     mask=mask)
            dy = dy * zv * sig
        if HAS_D:
            dD_acc += tl.sum(dy * uv, axis=1)
        last_j = tl.minimum(L - c * BLOCK_L, BLOCK_L) - 1
        gB_sum = tl.zeros([BLOCK_D, BLOCK_L], dtype=COMPUTE)  # sum_n g B
        gdaA_sum = tl.zeros([BLOCK_D, BLOCK_L], dtype=COMPUTE)  # sum_n gda A
        for n in range(0, N):
            An = tl.load(A_ptr + d * s_ad + n * s_an, mask=dmask,
                         other=0.0).to(COMPUTE)
            a = tl.exp(dtv * An[:, None])
            Bn = _bc_row(B_ptr, b_base, d, n, t, dmask, tmask, s_bg, s_bn,
                         s_bl, B_VAR, COMPUTE)
            Cn = _bc_row(C_ptr, c_base, d, n, t, dmask, tmask, s_cg, s_cn,
                         s_cl, C_VAR, COMPUTE)
            x = dtu * Bn
            # the chunk's states, recomputed from the kept one
            h0 = tl.load(states_ptr + b * s_sb + c * s_sc + n * s_sn + d,
                         mask=dmask, other=0.0)
            xf = tl.where(jj[None, :] == 0, x + a * h0[:, None], x)
            _, h = tl.associative_scan((a, xf), 1, _scan_combine)
            # dC needs h; the rest a[t] h[t-1] = h[t] - x[t] (h, x die here)
            if C_VAR:
                tl.store(dCv_ptr + v_base + n * s_vn + t,
                         tl.sum(h * dy, axis=0), mask=tmask)
            else:
                dC_acc = tl.where(ncol[None, :] == n,
                                  dC_acc + tl.sum(h * dy, 1)[:, None], dC_acc)
            h_prev = h - x
            # adjoint, the carry folded into the chunk's last step
            gin = Cn * dy
            gin = tl.where(jj[None, :] == last_j,
                           gin + _column(carry, ncol, n)[:, None], gin)
            _, _, g = tl.associative_scan((a, ones, gin), 1,
                                          _adjoint_combine, reverse=True)
            out0 = tl.sum(tl.where(jj[None, :] == 0, a * g, 0.0), 1)
            carry = tl.where(ncol[None, :] == n, out0[:, None], carry)
            # dL/d(delta A)[t] = g[t] a[t] h[t-1]
            gda = g * h_prev
            hit = ncol[None, :] == n
            dA_acc = tl.where(hit, dA_acc + tl.sum(gda * dtv, 1)[:, None],
                              dA_acc)
            gB_sum += g * Bn
            gdaA_sum += gda * An[:, None]
            if B_VAR:
                tl.store(dBv_ptr + v_base + n * s_vn + t,
                         tl.sum(g * dtu, axis=0), mask=tmask)
            else:
                dB_acc = tl.where(hit, dB_acc + tl.sum(g * dtu, 1)[:, None],
                                  dB_acc)
        du = gB_sum * dtv
        if HAS_D:
            du += Dv[:, None] * dy
        tl.store(du_ptr + g_off, rounded(du, du_ptr), mask=mask)
        uv = tl.load(u_ptr + u_off, mask=mask, other=0.0).to(COMPUTE)
        ddt = gB_sum * uv + gdaA_sum
        if SOFTPLUS:
            raw = tl.load(dt_ptr + dt_off, mask=mask, other=0.0).to(COMPUTE)
            if HAS_BIAS:
                raw = raw + bias[:, None]
            e = tl.exp(tl.minimum(raw, 20.0))
            ddt = ddt * tl.where(raw <= 20.0, e / (1.0 + e), 1.0)
        ddt = tl.where(mask, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddt_ptr + g_off, rounded(ddt, ddt_ptr),
                 mask=mask)
    p_off = b * s_pb + d[:, None] * s_pd + ncol[None, :]
    tl.store(dA_ptr + p_off, dA_acc, mask=dn_mask)
    if not B_VAR:
        tl.store(dBc_ptr + p_off, dB_acc, mask=dn_mask)
    if not C_VAR:
        tl.store(dCc_ptr + p_off, dC_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + b * s_qb + d, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * s_qb + d, dbias_acc, mask=dmask)


# ------------------------------------------------------------------ host ---
class _Layout:
    """Units, strides and flags of one call (see the module docstring)."""

    def __init__(self, u: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 reverse: Optional[Tuple[bool, ...]]) -> None:
        self.batch, self.dim, self.length = u.shape
        self.dstate = A.shape[1]
        self.n_pad = next_pow2(self.dstate)
        self.b_var, self.c_var = B.dim() > 2, C.dim() > 2
        gb = B.shape[1] if B.dim() == 4 else 1
        gc = C.shape[1] if C.dim() == 4 else 1
        nrev = len(reverse) if reverse is not None else 1
        self.units = math.lcm(gb, gc, nrev)
        self.per_unit = self.dim // self.units
        self.b_groups, self.c_groups = gb, gc
        self.b_units, self.c_units = self.units // gb, self.units // gc
        self.r_units = self.units // nrev

    @staticmethod
    def bc_strides(mat: Tensor) -> Tuple[int, int, int, int]:
        """(batch, group, state, time) strides; a constant (dim, N) matrix
        passes its channel stride as the group stride."""
        if mat.dim() == 2:
            return 0, mat.stride(0), mat.stride(1), 0
        if mat.dim() == 3:
            return mat.stride(0), 0, mat.stride(1), mat.stride(2)
        return mat.stride(0), mat.stride(1), mat.stride(2), mat.stride(3)

    def flags(self, D, z, delta_bias, softplus, rev) -> dict:
        return dict(B_VAR=self.b_var, C_VAR=self.c_var, HAS_D=D is not None,
                    HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                    SOFTPLUS=bool(softplus), HAS_REV=rev is not None,
                    N_PAD=self.n_pad)

    def check(self, tensors) -> None:
        """The launch fits a GPU (:func:`check_launch`): units and batch
        on grid axes y / z; time, state and chunk offsets in 32 bits (the
        largest chunk count is that of the shortest candidate chunk)."""
        time_stride = max(abs(st) for t in tensors if t is not None
                          and t.dim() >= 3 for st in t.stride()[-1:])
        state_stride = max(abs(t.stride(-2 if t.dim() >= 3 else 1))
                           for t in tensors[2:5])
        check_launch('selective_scan', dict(units=self.units,
                                            batch=self.batch), dict(
            time=(self.length - 1) * time_stride,
            state=(self.dstate - 1) * state_stride,
            chunk=triton.cdiv(self.length, _BLOCK_L[0]) * self.n_pad
            * self.dim,
            partial_sums=triton.cdiv(self.per_unit, _BLOCK_D[0])
            * self.dstate * self.length))

    def grid(self, meta) -> Tuple[int, int, int]:
        return (triton.cdiv(self.per_unit, meta['BLOCK_D']), self.units,
                self.batch)

    def smallest(self, kernel_configs, key: str,
                 block_l: Optional[int]) -> int:
        """The smallest ``key`` among the candidates for this shape."""
        cands = kernel_configs if len(kernel_configs) == 1 else _for_shape(
            kernel_configs, self.per_unit, self.length, block_l)
        return min(c.kwargs[key] for c in cands)


def _seq_strides(x: Optional[Tensor], like: Tensor) -> Tuple[int, int, int]:
    return (like if x is None else x).stride()


class _SelectiveScanTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, rev,
                reverse):
        lay = _Layout(u, A, B, C, reverse)
        cdt = compute_dtype(u)
        dev = u.device
        needs_grad = any(ctx.needs_input_grad[:8])
        out = torch.empty(u.shape, dtype=u.dtype, device=dev)
        last = torch.empty(lay.batch, lay.dim, lay.dstate, dtype=cdt,
                           device=dev)
        # kept for the backward: the states entering every chunk (sized
        # for the shortest candidate chunk) and, with z, the gate's input
        nchunks = triton.cdiv(lay.length, lay.smallest(FWD_CONFIGS,
                                                       'BLOCK_L', None))
        states = torch.empty(
            (lay.batch, nchunks, lay.n_pad, lay.dim) if needs_grad
            else (1, 1, 1, 1), dtype=cdt, device=dev)
        ypre = torch.empty(u.shape, dtype=cdt, device=dev) \
            if needs_grad and z is not None else out
        dummy = u
        _fwd_kernel[lay.grid](
            u, delta, A, B, C, dummy if D is None else D,
            dummy if z is None else z,
            dummy if delta_bias is None else delta_bias,
            dummy if rev is None else rev, out, last, states, ypre,
            lay.length, lay.dstate, lay.per_unit, lay.b_units, lay.c_units,
            lay.r_units, *u.stride(), *delta.stride(), *_seq_strides(z, u),
            *A.stride(), *_Layout.bc_strides(B), *_Layout.bc_strides(C),
            *out.stride(), *states.stride()[:3], *last.stride()[:2],
            lay.dim * lay.length, lay.length, STORE_STATES=needs_grad,
            COMPUTE=tl_dtype(cdt),
            **lay.flags(D, z, delta_bias, softplus, rev))
        ctx.set_materialize_grads(False)
        if needs_grad:
            ctx.block_l = launched_config(_fwd_kernel)['BLOCK_L']
            ctx.layout = lay
            ctx.softplus = softplus
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, rev,
                                  states, ypre if z is not None else None)
        return out, last

    @staticmethod
    def backward(ctx, dout: Optional[Tensor], dlast: Optional[Tensor]):
        (u, delta, A, B, C, D, z, delta_bias, rev, states,
         ypre) = ctx.saved_tensors
        lay = ctx.layout
        cdt = compute_dtype(u)
        dev = u.device
        if dout is None:
            dout = torch.zeros_like(u)
        du = torch.empty(u.shape, dtype=u.dtype, device=dev)
        ddelta = torch.empty(u.shape, dtype=delta.dtype, device=dev)
        dz = None if z is None else torch.empty(u.shape, dtype=z.dtype,
                                                device=dev)
        # the gradients are laid out as du; dout may be strided
        dout = dout if dout.stride() == du.stride() else dout.contiguous()
        part = dict(dtype=cdt, device=dev)
        dA = torch.empty(lay.batch, lay.dim, lay.n_pad, **part)
        dBc = torch.empty_like(dA) if not lay.b_var else dA
        dCc = torch.empty_like(dA) if not lay.c_var else dA
        dD = torch.empty(lay.batch, lay.dim, **part) if D is not None \
            else dA
        dbias = torch.empty(lay.batch, lay.dim, **part) \
            if delta_bias is not None else dA
        # sums over the channels of a block, per block (sized for the
        # narrowest candidate block; read up to the blocks that ran)
        nblk_alloc = triton.cdiv(lay.per_unit, lay.smallest(
            BWD_CONFIGS, 'BLOCK_D', ctx.block_l))
        vshape = (lay.batch, lay.units, nblk_alloc, lay.dstate, lay.length)
        dBv = torch.empty(vshape, **part) if lay.b_var else dA
        dCv = torch.empty(vshape, **part) if lay.c_var else dA
        vstrides = (math.prod(vshape[1:]), math.prod(vshape[2:]),
                    math.prod(vshape[3:]), lay.length)
        dummy = u
        _bwd_kernel[lay.grid](
            u, delta, A, B, C, dummy if D is None else D,
            dummy if z is None else z,
            dummy if delta_bias is None else delta_bias,
            dummy if rev is None else rev, states,
            dummy if ypre is None else ypre, dout,
            dummy if dlast is None else dlast.contiguous(),
            du, ddelta, dummy if dz is None else dz, dA, dBc, dCc, dD, dbias,
            dBv, dCv,
            lay.length, lay.dstate, lay.per_unit, lay.b_units, lay.c_units,
            lay.r_units, *u.stride(), *delta.stride(),
            *_seq_strides(z, u), *A.stride(), *_Layout.bc_strides(B),
            *_Layout.bc_strides(C), *states.stride()[:3], *du.stride(),
            lay.dim * lay.dstate, lay.dstate, *dA.stride()[:2], lay.dim,
            *vstrides, lay.dim * lay.length, lay.length,
            HAS_DLAST=dlast is not None, COMPUTE=tl_dtype(cdt),
            BLOCK_L=ctx.block_l,
            **lay.flags(D, z, delta_bias, ctx.softplus, rev))
        nblk = triton.cdiv(lay.per_unit,
                           launched_config(_bwd_kernel)['BLOCK_D'])

        def var_grad(part: Tensor, groups: int, like: Tensor) -> Tensor:
            # (batch, units, blocks, N, L) -> (batch, groups, N, L): the
            # units of a group and their channel blocks summed in order
            g = part[:, :, :nblk].reshape(lay.batch, groups, -1, lay.dstate,
                                          lay.length).sum(2)
            return g.reshape(like.shape).to(like.dtype)

        def per_channel(part: Tensor, like: Tensor) -> Tensor:
            return part[:, :, :lay.dstate].sum(0).to(like.dtype)

        dB_out = var_grad(dBv, lay.b_groups, B) if lay.b_var \
            else per_channel(dBc, B)
        dC_out = var_grad(dCv, lay.c_groups, C) if lay.c_var \
            else per_channel(dCc, C)
        dD_out = None if D is None else dD.sum(0).to(D.dtype)
        dbias_out = None if delta_bias is None \
            else dbias.sum(0).to(delta_bias.dtype)
        return (du, ddelta, per_channel(dA, A), dB_out, dC_out, dD_out, dz,
                dbias_out, None, None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                          C: Tensor, D: Optional[Tensor] = None,
                          z: Optional[Tensor] = None,
                          delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = False,
                          return_last_state: bool = False,
                          reverse: Optional[Sequence[bool]] = None):
    """Triton selective scan; the contract of
    :func:`mmvim.ops.selective_scan` (shapes checked there). ``reverse``
    (None or R flags, R dividing dim) runs in the kernel: the flagged
    channel blocks read and write their time axis from the end."""
    check_device('selective_scan', u, delta, A, B, C, D, z, delta_bias)
    if A.shape[1] > MAX_DSTATE:
        raise ValueError(
            f'selective_scan (triton backend): d_state={A.shape[1]} is more '
            f'than the kernels take ({MAX_DSTATE}, as mamba-ssm); use '
            'MMVIM_SCAN_BACKEND=torch for larger states')
    reverse = None if reverse is None or not any(reverse) \
        else tuple(bool(f) for f in reverse)
    rev = None if reverse is None else _reverse_flags(reverse, u.device)
    _Layout(u, A, B, C, reverse).check((u, delta, A, B, C, z))
    out, last = _SelectiveScanTriton.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), rev,
        reverse)
    return (out, last) if return_last_state else out


@functools.lru_cache(maxsize=64)
def _reverse_flags(reverse: Tuple[bool, ...], device: torch.device) -> Tensor:
    """The ``reverse`` flags as an int8 tensor on ``device``, made once per
    (flags, device) instead of copied to the device on every call. The
    kernels only read it."""
    return torch.tensor(reverse, dtype=torch.int8, device=device)
