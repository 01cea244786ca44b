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
  channels; the grid is (channel block, unit, batch). A program holds a
  (BLOCK_D, N, BLOCK_L) tile: its channels, all states (padded to a power
  of two), ``BLOCK_L`` time steps.
* Time runs in chunks of ``BLOCK_L`` steps. In a chunk the recurrence
  ``h[t] = exp(delta[t] A) h[t-1] + delta[t] u[t] B[t]`` is one
  ``tl.associative_scan`` of (decay, input) pairs along time (the state
  entering the chunk is folded into the first input); only products of
  decays are formed, never divisions by them, so nothing overflows for any
  ``delta * |A|``. ``y = sum_n C h (+ D u) (* silu(z))`` is reduced over the
  state axis of the tile. Reversed units map logical step j to ``L-1-j``
  in every load and store.
* The forward keeps the state entering every chunk, (batch, dim, L /
  BLOCK_L, N), when gradients are needed, and nothing else: memory is linear
  in L, never (batch, dim, N, L).
* The backward walks the chunks from the last: it recomputes the chunk's
  states from the kept one (the same scan), then solves the adjoint
  ``g[t] = C[t] dy[t] + exp(delta[t+1] A) g[t+1]`` with one reverse
  ``associative_scan`` (a three-component combine carries the decay of the
  next step, so no shifted copy is needed) and carries ``exp(delta[t0] A)
  g[t0]`` into the previous chunk. ``a[t] h[t-1]`` is ``h[t] - x[t]``, as in
  mamba-ssm's kernel.
* Reductions are deterministic: per-channel sums over time (dA, constant
  dB / dC, dD, d delta_bias) stay in the program's registers and are
  written per (batch, channel); sums over channels (time-varying dB / dC)
  are written per (batch, unit, channel block, N, L). torch sums these
  partial buffers in a fixed order. There is no atomic mode (it could only
  be justified by a GPU measurement).
* ``BLOCK_D`` and ``BLOCK_L`` are ``triton.autotune`` configs (num_warps
  follows the tile size), timed on the first call of every shape; the
  backward uses the forward's ``BLOCK_L`` (its kept states are per chunk)
  and tunes its own ``BLOCK_D``. Buffers whose size depends on them are
  sized for the smallest candidate and read up to what ran.
  ``MMVIM_TRITON_AUTOTUNE=0`` takes one size per shape instead (the tile
  nearest 2048 elements), which skips the tuning runs.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_utils import (
    AUTOTUNE,
    check_device,
    compute_dtype,
    configs,
    launched_config,
    next_pow2,
    tl_dtype,
    with_warps,
)

__all__ = ['selective_scan_triton']

# Tile sizes (BLOCK_D * N_PAD * BLOCK_L elements) the autotuner tries, and
# its candidates; num_warps follows the tile (4 up to 2048 elements, else 8).
TILE_MIN, TILE_MAX, TILE_GUESS = 1024, 4096, 2048
_BLOCK_L = (32, 64, 128)
_BLOCK_D = (1, 2, 4, 8, 16, 32, 64, 128)
# Under the interpreter: one config (partial channel blocks and several
# chunks already at test sizes).
_INTERPRET_FWD = (dict(BLOCK_D=64, BLOCK_L=64), 1)
_INTERPRET_BWD = (dict(BLOCK_D=64), 1)

FWD_CONFIGS = configs([(dict(BLOCK_D=d, BLOCK_L=t), 0) for t in _BLOCK_L
                       for d in _BLOCK_D], _INTERPRET_FWD)
BWD_CONFIGS = configs([(dict(BLOCK_D=d), 0) for d in _BLOCK_D],
                      _INTERPRET_BWD)


def _prune(cands, n_pad: int, per_unit: int, block_l: Optional[int]):
    """The candidates to time for one shape: tiles of TILE_MIN..TILE_MAX
    elements with no more channels than a unit has (else the largest tile
    under TILE_MAX), each with num_warps set for its tile. With autotuning
    off (:data:`AUTOTUNE`) only the one nearest TILE_GUESS elements."""
    def tile(c):
        return (c.kwargs['BLOCK_D'] * n_pad
                * (block_l or c.kwargs['BLOCK_L']))
    usable = [c for c in cands
              if c.kwargs['BLOCK_D'] <= next_pow2(per_unit)
              and tile(c) <= TILE_MAX] or [min(cands, key=tile)]
    kept = [c for c in usable if tile(c) >= TILE_MIN]
    if not kept:
        big = max(tile(c) for c in usable)
        kept = [c for c in usable if tile(c) == big]
    if not AUTOTUNE:
        kept = [min(kept, key=lambda c: (abs(math.log2(tile(c) / TILE_GUESS)),
                                         abs((block_l or c.kwargs['BLOCK_L'])
                                             - 64)))]
    return [with_warps(c, 4 if tile(c) <= 2048 else 8) for c in kept]


def _prune_fwd(cands, nargs, **kw):
    return _prune(cands, kw['N_PAD'], nargs['per_unit'], None)


def _prune_bwd(cands, nargs, **kw):
    return _prune(cands, kw['N_PAD'], nargs['per_unit'], kw['BLOCK_L'])


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


@triton.autotune(configs=FWD_CONFIGS, key=['L', 'N', 'per_unit', 'B_VAR',
                                           'C_VAR', 'HAS_Z', 'STORE_STATES'],
                 prune_configs_by={'early_config_prune': _prune_fwd})
@triton.jit
def _fwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, rev_ptr,
        out_ptr, last_ptr, states_ptr,
        L, N, per_unit, b_units, c_units, r_units,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_ad, s_an,
        s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl, s_ob, s_od, s_ol,
        s_sb, s_sd, s_sc, s_lb, s_ld,
        B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_REV: tl.constexpr, STORE_STATES: tl.constexpr,
        COMPUTE: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr):
    unit = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    ci = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ci < per_unit
    d = (unit * per_unit + ci).to(tl.int64)
    n = tl.arange(0, N_PAD)
    nmask = n < N
    dn_mask = dmask[:, None] & nmask[None, :]
    jj = tl.arange(0, BLOCK_L)
    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=dn_mask,
                other=0.0).to(COMPUTE)
    # constant B/C: (dim, N), the channel stride passed as s_bg / s_cg
    if B_VAR:
        B_base = B_ptr + b * s_bb + (unit // b_units).to(tl.int64) * s_bg
    else:
        Bc = tl.load(B_ptr + d[:, None] * s_bg + n[None, :] * s_bn,
                     mask=dn_mask, other=0.0).to(COMPUTE)
    if C_VAR:
        C_base = C_ptr + b * s_cb + (unit // c_units).to(tl.int64) * s_cg
    else:
        Cc = tl.load(C_ptr + d[:, None] * s_cg + n[None, :] * s_cn,
                     mask=dn_mask, other=0.0).to(COMPUTE)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    if HAS_REV:
        rev = tl.load(rev_ptr + unit // r_units) != 0
    h = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    for c in range(0, tl.cdiv(L, BLOCK_L)):
        j = c * BLOCK_L + jj
        tmask = j < L
        if HAS_REV:
            t = tl.where(rev, L - 1 - j, j)
        else:
            t = j
        mask = dmask[:, None] & tmask[None, :]
        if STORE_STATES:
            tl.store(states_ptr + b * s_sb + d[:, None] * s_sd + c * s_sc
                     + n[None, :], h, mask=dn_mask)
        uv = tl.load(u_ptr + b * s_ub + d[:, None] * s_ud + t[None, :] * s_ul,
                     mask=mask, other=0.0).to(COMPUTE)
        dtv = tl.load(dt_ptr + b * s_tb + d[:, None] * s_td
                      + t[None, :] * s_tl, mask=mask, other=0.0).to(COMPUTE)
        if HAS_BIAS:
            dtv = dtv + bias[:, None]
        if SOFTPLUS:
            dtv = _softplus(dtv)
        # padded steps: decay 1, input 0 (the state passes unchanged)
        dtv = tl.where(mask, dtv, 0.0)
        a = tl.exp(dtv[:, None, :] * A[:, :, None])
        if B_VAR:
            Bv = tl.load(B_base + n[:, None] * s_bn + t[None, :] * s_bl,
                         mask=nmask[:, None] & tmask[None, :],
                         other=0.0).to(COMPUTE)[None, :, :]
        else:
            Bv = Bc[:, :, None]
        x = (dtv * uv)[:, None, :] * Bv
        x = tl.where(jj[None, None, :] == 0, x + a * h[:, :, None], x)
        _, hs = tl.associative_scan((a, x), 2, _scan_combine)
        if C_VAR:
            Cv = tl.load(C_base + n[:, None] * s_cn + t[None, :] * s_cl,
                         mask=nmask[:, None] & tmask[None, :],
                         other=0.0).to(COMPUTE)[None, :, :]
        else:
            Cv = Cc[:, :, None]
        y = tl.sum(hs * Cv, axis=1)
        if HAS_D:
            y += Dv[:, None] * uv
        if HAS_Z:
            zv = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd
                         + t[None, :] * s_zl, mask=mask, other=0.0)
            zv = zv.to(COMPUTE)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol,
                 y.to(out_ptr.dtype.element_ty), mask=mask)
        # the state after the chunk (padded steps kept it unchanged)
        h = tl.sum(tl.where(jj[None, None, :] == BLOCK_L - 1, hs, 0.0), 2)
    tl.store(last_ptr + b * s_lb + d[:, None] * s_ld + n[None, :], h,
             mask=dn_mask)


@triton.autotune(configs=BWD_CONFIGS, key=['L', 'N', 'per_unit', 'B_VAR',
                                           'C_VAR', 'HAS_Z', 'BLOCK_L'],
                 prune_configs_by={'early_config_prune': _prune_bwd})
@triton.jit
def _bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, rev_ptr,
        states_ptr, dout_ptr, dlast_ptr,
        du_ptr, ddt_ptr, dz_ptr, dA_ptr, dBc_ptr, dCc_ptr, dD_ptr, dbias_ptr,
        dBv_ptr, dCv_ptr,
        L, N, per_unit, b_units, c_units, r_units, nblk,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_ad, s_an,
        s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl,
        s_sb, s_sd, s_sc, s_gb, s_gd, s_gl, s_lb, s_ld, s_pb, s_pd, s_qb,
        s_vb, s_vu, s_vk, s_vn,
        B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_REV: tl.constexpr, HAS_DLAST: tl.constexpr,
        COMPUTE: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr):
    pid_k = tl.program_id(0)
    unit = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    ci = pid_k * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ci < per_unit
    d = (unit * per_unit + ci).to(tl.int64)
    n = tl.arange(0, N_PAD)
    nmask = n < N
    dn_mask = dmask[:, None] & nmask[None, :]
    jj = tl.arange(0, BLOCK_L)
    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=dn_mask,
                other=0.0).to(COMPUTE)
    if B_VAR:
        B_base = B_ptr + b * s_bb + (unit // b_units).to(tl.int64) * s_bg
    else:
        Bc = tl.load(B_ptr + d[:, None] * s_bg + n[None, :] * s_bn,
                     mask=dn_mask, other=0.0).to(COMPUTE)
    if C_VAR:
        C_base = C_ptr + b * s_cb + (unit // c_units).to(tl.int64) * s_cg
    else:
        Cc = tl.load(C_ptr + d[:, None] * s_cg + n[None, :] * s_cn,
                     mask=dn_mask, other=0.0).to(COMPUTE)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(COMPUTE)
    if HAS_REV:
        rev = tl.load(rev_ptr + unit // r_units) != 0
    # part of a channel-summed partial of time-varying B / C
    v_base = b * s_vb + unit.to(tl.int64) * s_vu + pid_k * s_vk
    # carry = a[t0] g[t0] of the chunk after this one: dL/dh at its end
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + b * s_lb + d[:, None] * s_ld + n[None, :],
                        mask=dn_mask, other=0.0).to(COMPUTE)
    else:
        carry = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dA_acc = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dB_acc = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dC_acc = tl.zeros([BLOCK_D, N_PAD], dtype=COMPUTE)
    dD_acc = tl.zeros([BLOCK_D], dtype=COMPUTE)
    dbias_acc = tl.zeros([BLOCK_D], dtype=COMPUTE)
    ones = tl.full([BLOCK_D, N_PAD, BLOCK_L], 1.0, COMPUTE)
    nchunks = tl.cdiv(L, BLOCK_L)
    for cc in range(0, nchunks):
        c = nchunks - 1 - cc
        j = c * BLOCK_L + jj
        tmask = j < L
        if HAS_REV:
            t = tl.where(rev, L - 1 - j, j)
        else:
            t = j
        mask = dmask[:, None] & tmask[None, :]
        ntmask = nmask[:, None] & tmask[None, :]
        h0 = tl.load(states_ptr + b * s_sb + d[:, None] * s_sd + c * s_sc
                     + n[None, :], mask=dn_mask, other=0.0)
        uv = tl.load(u_ptr + b * s_ub + d[:, None] * s_ud + t[None, :] * s_ul,
                     mask=mask, other=0.0).to(COMPUTE)
        raw = tl.load(dt_ptr + b * s_tb + d[:, None] * s_td
                      + t[None, :] * s_tl, mask=mask, other=0.0).to(COMPUTE)
        if HAS_BIAS:
            raw = raw + bias[:, None]
        if SOFTPLUS:
            dtv = _softplus(raw)
        else:
            dtv = raw
        dtv = tl.where(mask, dtv, 0.0)
        a = tl.exp(dtv[:, None, :] * A[:, :, None])
        if B_VAR:
            Bv = tl.load(B_base + n[:, None] * s_bn + t[None, :] * s_bl,
                         mask=ntmask, other=0.0).to(COMPUTE)[None, :, :]
        else:
            Bv = Bc[:, :, None]
        if C_VAR:
            Cv = tl.load(C_base + n[:, None] * s_cn + t[None, :] * s_cl,
                         mask=ntmask, other=0.0).to(COMPUTE)[None, :, :]
        else:
            Cv = Cc[:, :, None]
        dtu = dtv * uv
        x = dtu[:, None, :] * Bv
        # recompute the chunk's states from the kept one
        xf = tl.where(jj[None, None, :] == 0, x + a * h0[:, :, None], x)
        _, h = tl.associative_scan((a, xf), 2, _scan_combine)
        g_off = b * s_gb + d[:, None] * s_gd + t[None, :] * s_gl
        dy = tl.load(dout_ptr + g_off, mask=mask, other=0.0).to(COMPUTE)
        if HAS_Z:
            y = tl.sum(h * Cv, axis=1)
            if HAS_D:
                y += Dv[:, None] * uv
            zv = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd
                         + t[None, :] * s_zl, mask=mask, other=0.0)
            zv = zv.to(COMPUTE)
            sig = tl.sigmoid(zv)
            dz = dy * y * sig * (1.0 + zv * (1.0 - sig))
            tl.store(dz_ptr + g_off, dz.to(dz_ptr.dtype.element_ty),
                     mask=mask)
            dy = dy * zv * sig
        if HAS_D:
            dD_acc += tl.sum(dy * uv, axis=1)
        # adjoint, with the carry folded into the chunk's last step
        last_j = tl.minimum(L - c * BLOCK_L, BLOCK_L) - 1
        gin = Cv * dy[:, None, :]
        gin = tl.where(jj[None, None, :] == last_j, gin + carry[:, :, None],
                       gin)
        _, _, g = tl.associative_scan((a, ones, gin), 2, _adjoint_combine,
                                      reverse=True)
        carry = tl.sum(tl.where(jj[None, None, :] == 0, a * g, 0.0), 2)
        # dL/d(delta A)[t] = g[t] a[t] h[t-1], a[t] h[t-1] = h[t] - x[t]
        gda = g * (h - x)
        dA_acc += tl.sum(gda * dtv[:, None, :], axis=2)
        gB = tl.sum(g * Bv, axis=1)
        ddt = gB * uv + tl.sum(gda * A[:, :, None], axis=1)
        du = gB * dtv
        if HAS_D:
            du += Dv[:, None] * dy
        tl.store(du_ptr + g_off, du.to(du_ptr.dtype.element_ty), mask=mask)
        if SOFTPLUS:
            e = tl.exp(tl.minimum(raw, 20.0))
            ddt = ddt * tl.where(raw <= 20.0, e / (1.0 + e), 1.0)
        ddt = tl.where(mask, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddt_ptr + g_off, ddt.to(ddt_ptr.dtype.element_ty),
                 mask=mask)
        if B_VAR:
            tl.store(dBv_ptr + v_base + n[:, None] * s_vn + t[None, :],
                     tl.sum(g * dtu[:, None, :], axis=0), mask=ntmask)
        else:
            dB_acc += tl.sum(g * dtu[:, None, :], axis=2)
        if C_VAR:
            tl.store(dCv_ptr + v_base + n[:, None] * s_vn + t[None, :],
                     tl.sum(h * dy[:, None, :], axis=0), mask=ntmask)
        else:
            dC_acc += tl.sum(h * dy[:, None, :], axis=2)
    p_off = b * s_pb + d[:, None] * s_pd + n[None, :]
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

    def grid(self, meta) -> Tuple[int, int, int]:
        return (triton.cdiv(self.per_unit, meta['BLOCK_D']), self.units,
                self.batch)


def _seq_strides(x: Optional[Tensor], like: Tensor) -> Tuple[int, int, int]:
    return (like if x is None else x).stride()


class _SelectiveScanTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, rev,
                reverse):
        lay = _Layout(u, A, B, C, reverse)
        cdt = compute_dtype(u)
        needs_grad = any(ctx.needs_input_grad[:8])
        out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
        last = torch.empty(lay.batch, lay.dim, lay.dstate, dtype=cdt,
                           device=u.device)
        min_l = min(c.kwargs['BLOCK_L'] for c in (
            FWD_CONFIGS if len(FWD_CONFIGS) == 1 else
            _prune(FWD_CONFIGS, lay.n_pad, lay.per_unit, None)))
        states = torch.empty(
            (lay.batch, lay.dim, triton.cdiv(lay.length, min_l), lay.n_pad)
            if needs_grad else (1, 1, 1, 1), dtype=cdt, device=u.device)
        dummy = u
        _fwd_kernel[lay.grid](
            u, delta, A, B, C, dummy if D is None else D,
            dummy if z is None else z,
            dummy if delta_bias is None else delta_bias,
            dummy if rev is None else rev, out, last, states,
            lay.length, lay.dstate, lay.per_unit, lay.b_units, lay.c_units,
            lay.r_units, *u.stride(), *delta.stride(), *_seq_strides(z, u),
            *A.stride(), *_Layout.bc_strides(B), *_Layout.bc_strides(C),
            *out.stride(), *states.stride()[:3], *last.stride()[:2],
            STORE_STATES=needs_grad, COMPUTE=tl_dtype(cdt),
            **lay.flags(D, z, delta_bias, softplus, rev))
        ctx.set_materialize_grads(False)
        if needs_grad:
            ctx.block_l = launched_config(_fwd_kernel)['BLOCK_L']
            ctx.layout = lay
            ctx.softplus = softplus
            ctx.reverse = reverse
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, rev,
                                  states)
        return out, last

    @staticmethod
    def backward(ctx, dout: Optional[Tensor], dlast: Optional[Tensor]):
        u, delta, A, B, C, D, z, delta_bias, rev, states = ctx.saved_tensors
        lay = ctx.layout
        cdt = compute_dtype(u)
        dev = u.device
        if dout is None:
            dout = torch.zeros_like(u)
        du = torch.empty(u.shape, dtype=u.dtype, device=dev)
        ddelta = torch.empty(u.shape, dtype=delta.dtype, device=dev)
        dz = None if z is None else torch.empty(u.shape, dtype=z.dtype,
                                                device=dev)
        # outputs are laid out as u's contiguous buffer; dout may be strided
        dout = dout if dout.stride() == du.stride() else dout.contiguous()
        part = dict(dtype=cdt, device=dev)
        dA = torch.empty(lay.batch, lay.dim, lay.dstate, **part)
        dBc = torch.empty_like(dA) if not lay.b_var else dA
        dCc = torch.empty_like(dA) if not lay.c_var else dA
        dD = torch.empty(lay.batch, lay.dim, **part) if D is not None \
            else dA
        dbias = torch.empty(lay.batch, lay.dim, **part) \
            if delta_bias is not None else dA
        flags = lay.flags(D, z, delta_bias, ctx.softplus, rev)
        min_d = min(c.kwargs['BLOCK_D'] for c in (
            BWD_CONFIGS if len(BWD_CONFIGS) == 1 else
            _prune(BWD_CONFIGS, lay.n_pad, lay.per_unit, ctx.block_l)))
        nblk_alloc = triton.cdiv(lay.per_unit, min_d)
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
            dummy if rev is None else rev, states, dout,
            dummy if dlast is None else dlast.contiguous(),
            du, ddelta, dummy if dz is None else dz, dA, dBc, dCc, dD, dbias,
            dBv, dCv,
            lay.length, lay.dstate, lay.per_unit, lay.b_units, lay.c_units,
            lay.r_units, nblk_alloc, *u.stride(), *delta.stride(),
            *_seq_strides(z, u), *A.stride(), *_Layout.bc_strides(B),
            *_Layout.bc_strides(C), *states.stride()[:3], *du.stride(),
            lay.dim * lay.dstate, lay.dstate, *dA.stride()[:2], lay.dim,
            *vstrides,
            HAS_DLAST=dlast is not None, COMPUTE=tl_dtype(cdt),
            BLOCK_L=ctx.block_l, **flags)
        nblk = triton.cdiv(lay.per_unit, launched_config(_bwd_kernel)[
            'BLOCK_D'])

        def var_grad(part: Tensor, groups: int, like: Tensor) -> Tensor:
            # (batch, units, blocks, N, L) -> (batch, groups, N, L), summed
            # over the units of a group and their channel blocks in order
            g = part[:, :, :nblk].reshape(lay.batch, groups, -1, lay.dstate,
                                          lay.length).sum(2)
            return g.reshape(like.shape).to(like.dtype)

        dA_out = dA.sum(0).to(A.dtype)
        dB_out = var_grad(dBv, lay.b_groups, B) if lay.b_var \
            else dBc.sum(0).to(B.dtype)
        dC_out = var_grad(dCv, lay.c_groups, C) if lay.c_var \
            else dCc.sum(0).to(C.dtype)
        dD_out = None if D is None else dD.sum(0).to(D.dtype)
        dbias_out = None if delta_bias is None \
            else dbias.sum(0).to(delta_bias.dtype)
        return (du, ddelta, dA_out, dB_out, dC_out, dD_out, dz, dbias_out,
                None, None, None)


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
    reverse = None if reverse is None or not any(reverse) \
        else tuple(bool(f) for f in reverse)
    rev = None if reverse is None else torch.tensor(
        reverse, dtype=torch.int8, device=u.device)
    out, last = _SelectiveScanTriton.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), rev,
        reverse)
    return (out, last) if return_last_state else out
