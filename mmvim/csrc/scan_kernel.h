// Vectorised selective scan (forward and adjoint backward) for one
// instruction set. Included by scan_isa_*.cpp, which define
//   MMVIM_SCAN_ISA   the namespace of this copy (generic, avx2, avx512)
//   MMVIM_VEC_BYTES  the SIMD register width in bytes (16, 32, 64)
// after switching the compiler's target (a pragma), so the same source gives
// one kernel per instruction set and the binding picks one at run time.
//
// Layout: a work item is (batch b, fine group g, block k of `lanes`
// channels). Its channels are the SIMD lanes, so every step is a vertical
// operation and there is no horizontal reduction in the recurrence, for any
// d_state (VMamba's d_state = 1 included). The sequence is cut into chunks
// of kChunk steps; each chunk's (channel, time) tiles of u, delta, z are
// transposed to (time, channel) in a small buffer, the element-wise work
// (bias, softplus, delta * u, D skip, silu(z) gate) is done there, the
// recurrence runs over the chunk, and the output tile is transposed back.
//
// Per step and state n (vectors over channels):
//   a    = exp(delta * A[:, n])
//   h[n] = a * h[n] + delta * u * B[t, n]
//   y   += C[t, n] * h[n]
// The backward recomputes a chunk's states from the state saved at its
// start and runs the adjoint g[n] = C[t, n] dy + a[t+1] g[n] backwards.
// Sums over channels (dB, dC when they depend on time) are written per item
// and reduced by the binding in a fixed order; sums over time stay in lanes.
#ifndef MMVIM_SCAN_ISA
#error "define MMVIM_SCAN_ISA and MMVIM_VEC_BYTES before including scan_kernel.h"
#endif

#define MMVIM_INLINE inline __attribute__((always_inline))
// fully unroll the loops over the state when d_state is a template constant,
// so that the state stays in registers
#define MMVIM_UNROLL _Pragma("GCC unroll 16")

namespace mmvim_scan {
namespace MMVIM_SCAN_ISA {

template <typename T>
struct VecT;
template <>
struct VecT<float> {
  static constexpr int W = MMVIM_VEC_BYTES / 4;
  typedef float V __attribute__((vector_size(MMVIM_VEC_BYTES)));
  typedef int32_t I __attribute__((vector_size(MMVIM_VEC_BYTES)));
};
template <>
struct VecT<double> {
  static constexpr int W = MMVIM_VEC_BYTES / 8;
  typedef double V __attribute__((vector_size(MMVIM_VEC_BYTES)));
  typedef int64_t I __attribute__((vector_size(MMVIM_VEC_BYTES)));
};

// Scratch memory of scalars (so that no std:: template is instantiated on a
// target-specific vector type), handed out as aligned vector arrays.
template <typename V>
class Arena {
 public:
  explicit Arena(size_t vectors) : mem_(vectors * sizeof(V) + 64) {
    uintptr_t p = reinterpret_cast<uintptr_t>(mem_.data());
    next_ = reinterpret_cast<V*>((p + 63) & ~uintptr_t(63));
  }
  V* take(size_t n) {
    V* r = next_;
    next_ += n;
    return r;
  }

 private:
  std::vector<unsigned char> mem_;
  V* next_;
};

template <typename T>
struct Kern {
  using V = typename VecT<T>::V;
  using I = typename VecT<T>::I;
  static constexpr int W = VecT<T>::W;
  static constexpr bool kF32 = sizeof(T) == 4;

  // ------------------------------------------------------------ helpers --
  // (s - 0 is s for every s, -0 included, so this folds to a broadcast)
  static MMVIM_INLINE V splat(T s) { return s - V{}; }
  static MMVIM_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static MMVIM_INLINE V vmax(V a, V b) { return a > b ? a : b; }

  // exp for float lanes: x = n ln2 + r with n = round(x / ln2) and r
  // reduced in two steps (Cody and Waite: n * 0.693359375 is exact), a
  // degree-6 polynomial for e^r on |r| <= ln2 / 2 (relative error 8e-8 in
  // float32) and n added to the exponent bits. The argument is used as
  // given (no rescaling by log2(e), whose rounding would add |x| * 6e-8).
  // Exactly 0 below e^-86 and inf above e^88.3, so any delta * |A| is
  // finite (no NaN from inf * 0 later).
  static MMVIM_INLINE V exp_f32(V x) {
    const V lo = splat(T(-86.0)), hi = splat(T(88.3));
    V xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const V magic = splat(T(12582912.0));  // 1.5 * 2^23: round to integer
    const V m = xc * T(1.4426950408889634) + magic;
    const V n = m - magic;
    V r = xc - n * T(0.693359375);
    r = r + n * T(2.12194440e-4);
    V p = splat(T(0.001381461275741458));
    p = p * r + T(0.008368710055947304);
    p = p * r + T(0.04166838899254799);
    p = p * r + T(0.1666652113199234);
    p = p * r + T(0.4999999403953552);
    p = p * r + T(1.0);
    p = p * r + T(1.0);
    const I k = (I)m - 0x4B400000;  // n as an integer, from m's bits
    V e = (V)((I)p + (k << 23));
    e = x < lo ? V{} : e;
    e = x > hi ? splat(std::numeric_limits<T>::infinity()) : e;
    return e;
  }

  template <typename F>
  static inline V each(V x, F f) {
    for (int i = 0; i < W; ++i) x[i] = f(x[i]);
    return x;
  }

  static MMVIM_INLINE V vexp(V x) {
    if constexpr (kF32) {
      return exp_f32(x);
    } else {
      return each(x, [](T v) { return std::exp(v); });
    }
  }
  static MMVIM_INLINE V vmin(V a, V b) { return a < b ? a : b; }

  // 1 / d for finite d > 0: the hardware reciprocal estimate refined by
  // Newton steps to float round-off (a division blocks the divider for
  // about ten cycles per vector, which dominated the d_state = 1 scans).
  static MMVIM_INLINE V recip(V d) {
    if constexpr (kF32) {
#if (defined(__x86_64__) || defined(_M_X64)) && MMVIM_VEC_BYTES == 64
      const V r = (V)_mm512_maskz_rcp14_ps(0xFFFF, (__m512)d);  // 2^-14
      return r * (T(2) - d * r);
#elif (defined(__x86_64__) || defined(_M_X64)) && MMVIM_VEC_BYTES == 32
      V r = (V)_mm256_rcp_ps((__m256)d);  // 1.5 * 2^-12
      r = r * (T(2) - d * r);
      return r * (T(2) - d * r);
#elif (defined(__x86_64__) || defined(_M_X64)) && MMVIM_VEC_BYTES == 16
      V r = (V)_mm_rcp_ps((__m128)d);
      r = r * (T(2) - d * r);
      return r * (T(2) - d * r);
#else
      return T(1) / d;
#endif
    } else {
      return T(1) / d;
    }
  }
  // 1 / (1 + exp(-x)); exp(-x) is capped at e^80, so the reciprocal sees a
  // finite value (sigmoid(x) < 2e-35 there either way).
  static MMVIM_INLINE V sigmoid(V x) {
    return recip(T(1) + vexp(vmin(-x, splat(T(80)))));
  }

  // softplus with the kernel's threshold: x above 20 passes unchanged.
  // float: log1p(y) = 2 atanh(y / (2 + y)) for y = exp(-|x|) in (0, 1],
  // a series in s^2 <= 1/9 (relative error < 2e-8), no cancellation.
  static MMVIM_INLINE V softplus(V x) {
    if constexpr (kF32) {
      const V ax = x < V{} ? -x : x;
      const V y = vexp(-ax);
      const V s = y * recip(y + T(2));
      const V s2 = s * s;
      V q = splat(T(1.0 / 13));
      q = q * s2 + T(1.0 / 11);
      q = q * s2 + T(1.0 / 9);
      q = q * s2 + T(1.0 / 7);
      q = q * s2 + T(1.0 / 5);
      q = q * s2 + T(1.0 / 3);
      q = q * s2 + T(1);
      const V r = vmax(x, V{}) + T(2) * s * q;
      return x > splat(T(20)) ? x : r;
    } else {
      return each(x, [](T v) { return v > T(20) ? v : std::log1p(std::exp(v)); });
    }
  }

  // -------------------------------------------------- shuffles (W lanes) --
  static MMVIM_INLINE V shuffle(V a, V b, I mask) {
#if defined(__clang__)
    V r;
    for (int i = 0; i < W; ++i) r[i] = mask[i] < W ? a[mask[i]] : b[mask[i] - W];
    return r;
#else
    return __builtin_shuffle(a, b, mask);
#endif
  }
  // transpose step: swap the off-diagonal S x S blocks of rows i and i + S
  template <int S>
  static MMVIM_INLINE void transpose_level(V* r) {
    I lo, hi;
    for (int l = 0; l < W; ++l) {
      lo[l] = (l & S) ? W + l - S : l;
      hi[l] = (l & S) ? W + l : l + S;
    }
    for (int i = 0; i < W; ++i) {
      if (i & S) continue;
      const V a = r[i], b = r[i + S];
      r[i] = shuffle(a, b, lo);
      r[i + S] = shuffle(a, b, hi);
    }
    if constexpr (S > 1) transpose_level<S / 2>(r);
  }
  static MMVIM_INLINE void transpose(V* r) { transpose_level<W / 2>(r); }

  // W row vectors -> one vector of their W lane sums (lane i = sum of row
  // i): each level folds every segment of S lanes in half and packs two
  // vectors into one, so W rows cost 2 (W - 1) shuffles and W - 1 adds.
  template <int S>
  static MMVIM_INLINE void fold_level(V* r, int rows) {
    I lo, hi;
    constexpr int nseg = W / S, half = S / 2;
    for (int l = 0; l < W; ++l) {
      const int q = l / half, o = l % half;
      const int base = (q < nseg ? 0 : W) + (q % nseg) * S + o;
      lo[l] = base;
      hi[l] = base + half;
    }
    for (int i = 0; i < rows / 2; ++i) {
      const V a = r[2 * i], b = r[2 * i + 1];
      r[i] = shuffle(a, b, lo) + shuffle(a, b, hi);
    }
    if constexpr (S > 2) fold_level<S / 2>(r, rows / 2);
  }
  static MMVIM_INLINE V row_sums(const V* rows) {
    V r[W];
    for (int i = 0; i < W; ++i) r[i] = rows[i];
    if constexpr (W == 1) {
      return r[0];
    } else {
      fold_level<W>(r, W);
      return r[0];
    }
  }

  // (channel, time) rows of a (batch, dim, len) tensor <-> (time) vectors
  // over channels. Full W x W blocks go through register transposes. With
  // `rev` the item runs backwards in time: step s + t of its scan is memory
  // position len - 1 - (s + t), so the chunk is the mirrored segment of the
  // rows, whose transposed blocks are put in (taken from) the tile in
  // reverse order.
  static void load_tile(V* tile, const T* rows, int64_t len, int nc, int64_t s,
                        int steps, bool rev) {
    const int64_t m = rev ? len - s - steps : s;  // first memory position
    // ask for the next chunk of every row now: the rows are far apart (often
    // a power of two), which the hardware prefetchers do not follow
    const int64_t left = len - s - steps;  // steps after this chunk
    if (left > 0) {
      const int64_t ahead = std::min<int64_t>(steps, left);
      const int64_t next = rev ? m - ahead : m + steps;
      for (int c = 0; c < nc; ++c)
        for (int64_t k = 0; k < ahead; k += 64 / sizeof(T))
          __builtin_prefetch(rows + c * len + next + k, 0, 2);
    }
    const int last = steps - 1;
    int t0 = 0;
    if (nc == W) {
      const int full = steps / W;
      for (int j = 0; j < full; ++j) {
        // a reversed item walks down through memory as the forward one
        // walks up
        const int b0 = (rev ? full - 1 - j : j) * W;
        V r[W];
        for (int c = 0; c < W; ++c) r[c] = load(rows + c * len + m + b0);
        transpose(r);
        if (rev)
          for (int i = 0; i < W; ++i) tile[last - b0 - i] = r[i];
        else
          for (int i = 0; i < W; ++i) tile[b0 + i] = r[i];
      }
      t0 = full * W;
    }
    for (int t = t0; t < steps; ++t) {
      V v{};
      for (int c = 0; c < nc; ++c) v[c] = rows[c * len + m + t];
      tile[rev ? last - t : t] = v;
    }
  }
  static void store_tile(T* rows, const V* tile, int64_t len, int nc, int64_t s,
                         int steps, bool rev) {
    const int64_t m = rev ? len - s - steps : s;
    const int last = steps - 1;
    if (rev && m > 0) {
      // the next chunk's rows lie below this one, where the hardware does
      // not fetch ahead for stores
      const int64_t ahead = std::min<int64_t>(steps, m);
      for (int c = 0; c < nc; ++c)
        for (int64_t k = 0; k < ahead; k += 64 / sizeof(T))
          __builtin_prefetch(rows + c * len + m - ahead + k, 1, 2);
    }
    int t0 = 0;
    if (nc == W) {
      for (; t0 + W <= steps; t0 += W) {
        V r[W];
        if (rev)
          for (int i = 0; i < W; ++i) r[i] = tile[last - t0 - i];
        else
          for (int i = 0; i < W; ++i) r[i] = tile[t0 + i];
        transpose(r);
        for (int c = 0; c < W; ++c) std::memcpy(rows + c * len + m + t0, &r[c], sizeof(V));
      }
    }
    for (int t = t0; t < steps; ++t) {
      const V v = tile[rev ? last - t : t];
      for (int c = 0; c < nc; ++c) rows[c * len + m + t] = v[c];
    }
  }
  // lanes of a per-channel vector (dim,) or of column n of a (dim, N) matrix
  static V gather(const T* p, int nc, int64_t stride, T scale = T(1)) {
    V v{};
    if (p)
      for (int c = 0; c < nc; ++c) v[c] = p[c * stride] * scale;
    return v;
  }
  static void scatter(T* p, V v, int nc, int64_t stride) {
    for (int c = 0; c < nc; ++c) p[c * stride] = v[c];
  }

  struct Item {
    int64_t b, g, k, c0;
    int nc;
    bool rev;  // runs backwards in time
  };
  static Item item_of(const ScanParams<T>& p, int64_t it) {
    Item r;
    const int64_t per_b = p.groups * p.blocks_per_group;
    r.b = it / per_b;
    const int64_t rem = it % per_b;
    r.g = rem / p.blocks_per_group;
    r.k = rem % p.blocks_per_group;
    const int64_t H = p.dim / p.groups;
    r.c0 = r.g * H + r.k * W;
    r.nc = static_cast<int>(std::min<int64_t>(W, H - r.k * W));
    r.rev = p.reverse && p.reverse[r.g / (p.groups / p.rev_groups)];
    return r;
  }
  // (len, N) slice of a time-varying B/C (batch, G', len, N) for an item
  static const T* bc_rows(const T* M, int64_t gm, const ScanParams<T>& p,
                          const Item& im) {
    const int64_t group = im.g / (p.groups / gm);
    return M + (im.b * gm + group) * p.len * p.dstate;
  }

  // Per-chunk element-wise prologue: delta (+ bias, softplus) and delta * u.
  static void step_sizes(V* raw, V* dt, V* x, const V* u, int steps, V bias,
                         bool sp) {
    for (int t = 0; t < steps; ++t) {
      const V r = raw[t] + bias;
      if (raw != dt) raw[t] = r;
      const V d = sp ? softplus(r) : r;
      dt[t] = d;
      x[t] = d * u[t];
    }
  }

  // -------------------------------------------------------------- forward --
  template <int NS, bool BV, bool CV>
  static void forward(const ScanParams<T>& p, int64_t begin, int64_t end) {
    const int N = NS ? NS : static_cast<int>(p.dstate);
    const int64_t L = p.len, nchunks = (L + kChunk - 1) / kChunk;
    const int64_t C = kChunk;
    Arena<V> arena(5 * C + 4 * N + 2);
    V *dt = arena.take(C), *x = arena.take(C), *u = arena.take(C),
      *z = arena.take(C), *y = arena.take(C);
    V *Av = arena.take(N), *Bk = arena.take(N), *Ck = arena.take(N),
      *hdyn = arena.take(N);
    for (int64_t it = begin; it < end; ++it) {
      const Item im = item_of(p, it);
      const int nc = im.nc;
      // memory position of scan step s + t: ts + dir * t, ts that of step s
      const int64_t dir = im.rev ? -1 : 1;
      const int64_t row0 = (im.b * p.dim + im.c0) * L;
      for (int n = 0; n < N; ++n) {
        Av[n] = gather(p.A + im.c0 * N + n, nc, N);
        if (!BV) Bk[n] = gather(p.B + im.c0 * N + n, nc, N);
        if (!CV) Ck[n] = gather(p.C + im.c0 * N + n, nc, N);
      }
      const V Dv = gather(p.D ? p.D + im.c0 : nullptr, nc, 1);
      const V biasv = gather(p.bias ? p.bias + im.c0 : nullptr, nc, 1);
      const T* Bt = BV ? bc_rows(p.B, p.b_groups, p, im) : nullptr;
      const T* Ct = CV ? bc_rows(p.C, p.c_groups, p, im) : nullptr;
      V hloc[NS ? NS : 1];
      V* h = NS ? hloc : hdyn;
      for (int n = 0; n < N; ++n) h[n] = V{};
      for (int64_t ci = 0; ci < nchunks; ++ci) {
        const int64_t s = ci * C;
        const int steps = static_cast<int>(std::min(C, L - s));
        const int64_t ts = im.rev ? L - 1 - s : s;
        if (p.states) {
          T* st = p.states + ((im.b * p.dim + im.c0) * nchunks + ci) * N;
          for (int n = 0; n < N; ++n) scatter(st + n, h[n], nc, nchunks * N);
        }
        load_tile(dt, p.delta + row0, L, nc, s, steps, im.rev);
        load_tile(u, p.u + row0, L, nc, s, steps, im.rev);
        if (p.z) load_tile(z, p.z + row0, L, nc, s, steps, im.rev);
        step_sizes(dt, dt, x, u, steps, biasv, p.softplus);
        for (int t = 0; t < steps; ++t) {
          const V dtv = dt[t], xv = x[t];
          const T* bt = BV ? Bt + (ts + dir * t) * N : nullptr;
          const T* ct = CV ? Ct + (ts + dir * t) * N : nullptr;
          V y0{}, y1{};
          MMVIM_UNROLL
          for (int n = 0; n < N; ++n) {
            const V a = vexp(dtv * Av[n]);
            const V bb = BV ? splat(bt[n]) : Bk[n];
            h[n] = a * h[n] + xv * bb;
            const V cc = CV ? splat(ct[n]) : Ck[n];
            if (n & 1)
              y1 += h[n] * cc;
            else
              y0 += h[n] * cc;
          }
          y[t] = y0 + y1;
        }
        for (int t = 0; t < steps; ++t) {
          V yy = y[t];
          if (p.D) yy += Dv * u[t];
          if (p.z) yy *= z[t] * sigmoid(z[t]);
          y[t] = yy;
        }
        store_tile(p.out + row0, y, L, nc, s, steps, im.rev);
      }
      if (p.last) {
        T* lp = p.last + (im.b * p.dim + im.c0) * N;
        for (int n = 0; n < N; ++n) scatter(lp + n, h[n], nc, N);
      }
    }
  }

  // ------------------------------------------------------------- backward --
  template <int NS, bool BV, bool CV>
  static void backward(const ScanParams<T>& p, int64_t begin, int64_t end) {
    const int N = NS ? NS : static_cast<int>(p.dstate);
    const int64_t L = p.len, nchunks = (L + kChunk - 1) / kChunk;
    const int64_t C = kChunk;
    const int64_t prow = (C * N + W - 1) / W * W;  // rows of dB/dC products
    Arena<V> arena(9 * C + 2 * C * N + (BV ? prow : 0) + (CV ? prow : 0) +
                   10 * N + 8);
    V *raw = arena.take(C), *dt = arena.take(C), *x = arena.take(C),
      *u = arena.take(C), *z = arena.take(C), *dy = arena.take(C),
      *ypre = arena.take(C), *ddt = arena.take(C), *du = arena.take(C);
    V *hbuf = arena.take(C * N), *abuf = arena.take(C * N);
    V* pb = BV ? arena.take(prow) : nullptr;
    V* pc = CV ? arena.take(prow) : nullptr;
    V *Av = arena.take(N), *Bk = arena.take(N),
      *Ck = arena.take(N), *gdyn = arena.take(N), *h0 = arena.take(N),
      *dA = arena.take(N), *dBk = arena.take(N), *dCk = arena.take(N),
      *hdyn = arena.take(N);
    for (int64_t it = begin; it < end; ++it) {
      const Item im = item_of(p, it);
      const int nc = im.nc;
      // memory position of scan step s + t: ts + dir * t, ts that of step s
      const int64_t dir = im.rev ? -1 : 1;
      const int64_t row0 = (im.b * p.dim + im.c0) * L;
      for (int n = 0; n < N; ++n) {
        Av[n] = gather(p.A + im.c0 * N + n, nc, N);
        if (!BV) Bk[n] = gather(p.B + im.c0 * N + n, nc, N);
        if (!CV) Ck[n] = gather(p.C + im.c0 * N + n, nc, N);
        dA[n] = dBk[n] = dCk[n] = V{};
      }
      const V Dv = gather(p.D ? p.D + im.c0 : nullptr, nc, 1);
      const V biasv = gather(p.bias ? p.bias + im.c0 : nullptr, nc, 1);
      V dDacc{}, dbacc{};
      const T* Bt = BV ? bc_rows(p.B, p.b_groups, p, im) : nullptr;
      const T* Ct = CV ? bc_rows(p.C, p.c_groups, p, im) : nullptr;
      V gloc[NS ? NS : 1], hloc[NS ? NS : 1];
      V* g = NS ? gloc : gdyn;
      V* h = NS ? hloc : hdyn;
      for (int n = 0; n < N; ++n)
        g[n] = p.dlast ? gather(p.dlast + (im.b * p.dim + im.c0) * N + n, nc, N)
                       : V{};
      for (int64_t ci = nchunks - 1; ci >= 0; --ci) {
        const int64_t s = ci * C;
        const int steps = static_cast<int>(std::min(C, L - s));
        const int64_t ts = im.rev ? L - 1 - s : s;
        load_tile(raw, p.delta + row0, L, nc, s, steps, im.rev);
        load_tile(u, p.u + row0, L, nc, s, steps, im.rev);
        if (p.z) load_tile(z, p.z + row0, L, nc, s, steps, im.rev);
        load_tile(dy, p.dout + row0, L, nc, s, steps, im.rev);
        step_sizes(raw, dt, x, u, steps, biasv, p.softplus);
        // recompute the chunk's decays and states from its saved start
        const T* st = p.states_in + ((im.b * p.dim + im.c0) * nchunks + ci) * N;
        for (int n = 0; n < N; ++n) h0[n] = h[n] = gather(st + n, nc, nchunks * N);
        for (int t = 0; t < steps; ++t) {
          const V dtv = dt[t], xv = x[t];
          const T* bt = BV ? Bt + (ts + dir * t) * N : nullptr;
          const T* ct = CV ? Ct + (ts + dir * t) * N : nullptr;
          V* ht = hbuf + t * N;
          V* at = abuf + t * N;
          V y0{}, y1{};
          MMVIM_UNROLL
          for (int n = 0; n < N; ++n) {
            const V a = vexp(dtv * Av[n]);
            const V bb = BV ? splat(bt[n]) : Bk[n];
            h[n] = a * h[n] + xv * bb;
            at[n] = a;
            ht[n] = h[n];
            if (p.z) {
              const V cc = CV ? splat(ct[n]) : Ck[n];
              if (n & 1)
                y1 += h[n] * cc;
              else
                y0 += h[n] * cc;
            }
          }
          if (p.z) ypre[t] = y0 + y1;
        }
        // gate and skip: out = (C.h + D u) * silu(z)
        for (int t = 0; t < steps; ++t) {
          V dyv = dy[t];
          if (p.z) {
            const V zt = z[t], sg = sigmoid(zt);
            const V yp = p.D ? ypre[t] + Dv * u[t] : ypre[t];
            ypre[t] = dyv * yp * sg * (T(1) + zt * (T(1) - sg));  // dz
            dyv = dyv * zt * sg;
            dy[t] = dyv;
          }
          if (p.D) dDacc += dyv * u[t];
        }
        // adjoint recurrence, backwards in time
        for (int t = steps - 1; t >= 0; --t) {
          const V dyv = dy[t], dtv = dt[t], xv = x[t];
          const T* bt = BV ? Bt + (ts + dir * t) * N : nullptr;
          const T* ct = CV ? Ct + (ts + dir * t) * N : nullptr;
          const V* ht = hbuf + t * N;
          const V* at = abuf + t * N;
          const V* hp = t > 0 ? hbuf + (t - 1) * N : h0;
          V ddtu0{}, ddtu1{}, dd0{}, dd1{};
          MMVIM_UNROLL
          for (int n = 0; n < N; ++n) {
            const V cc = CV ? splat(ct[n]) : Ck[n];
            const V bb = BV ? splat(bt[n]) : Bk[n];
            const V gn = g[n] + cc * dyv;  // dL/dh[t]
            if (BV)
              pb[t * N + n] = gn * xv;
            else
              dBk[n] += gn * xv;
            if (CV)
              pc[t * N + n] = ht[n] * dyv;
            else
              dCk[n] += ht[n] * dyv;
            const V ga = gn * at[n];
            const V gda = ga * hp[n];  // dL/d(delta A)[t]
            dA[n] += gda * dtv;
            g[n] = ga;
            if (n & 1) {
              ddtu1 += gn * bb;
              dd1 += gda * Av[n];
            } else {
              ddtu0 += gn * bb;
              dd0 += gda * Av[n];
            }
          }
          const V ddtu = ddtu0 + ddtu1;  // dL/d(delta u)[t]
          V dd = dd0 + dd1 + ddtu * u[t];
          du[t] = p.D ? ddtu * dtv + Dv * dyv : ddtu * dtv;
          if (p.softplus) {
            const V r = raw[t];
            dd = r > splat(T(20)) ? dd : dd * sigmoid(r);
          }
          dbacc += dd;
          ddt[t] = dd;
        }
        store_tile(p.du + row0, du, L, nc, s, steps, im.rev);
        store_tile(p.ddelta + row0, ddt, L, nc, s, steps, im.rev);
        if (p.z) store_tile(p.dz + row0, ypre, L, nc, s, steps, im.rev);
        // sums over this block's channels of the time-varying dB / dC
        const int64_t rows = steps * N;
        for (int which = 0; which < 2; ++which) {
          V* pr = which == 0 ? pb : pc;
          if (!pr) continue;
          // rows in memory order: a reversed item's chunk is mirrored
          const int64_t m = im.rev ? L - s - steps : s;
          T* dst = (which == 0 ? p.dB_part : p.dC_part) + (it * L + m) * N;
          if (im.rev)
            for (int t = 0; t < steps / 2; ++t)
              std::swap_ranges(pr + t * N, pr + (t + 1) * N, pr + (steps - 1 - t) * N);
          for (int64_t r = rows; r < (rows + W - 1) / W * W; ++r) pr[r] = V{};
          for (int64_t r0 = 0; r0 < rows; r0 += W) {
            const V sums = row_sums(pr + r0);
            const int64_t cnt = std::min<int64_t>(W, rows - r0);
            if (cnt == W)
              std::memcpy(dst + r0, &sums, sizeof(V));
            else
              for (int64_t i = 0; i < cnt; ++i) dst[r0 + i] = sums[i];
          }
        }
      }
      const int64_t cb = im.b * p.dim + im.c0;
      for (int n = 0; n < N; ++n) {
        scatter(p.dA_part + cb * N + n, dA[n], nc, N);
        if (!BV) scatter(p.dB_part + cb * N + n, dBk[n], nc, N);
        if (!CV) scatter(p.dC_part + cb * N + n, dCk[n], nc, N);
      }
      if (p.dD_part) scatter(p.dD_part + cb, dDacc, nc, 1);
      if (p.dbias_part) scatter(p.dbias_part + cb, dbacc, nc, 1);
    }
  }
};

// ------------------------------------------------------- entry points ------
// Specialised on d_state (1: VMamba, 8: MambaVision, 16: Vim, 0: any) and on
// whether B and C vary with time, so the state lives in registers.
template <typename T, bool BV, bool CV>
void run_bc(bool fwd, const ScanParams<T>& p, int64_t b, int64_t e) {
  using K = Kern<T>;
  if constexpr (sizeof(T) == 8) {  // float64 is for checking, not speed
    return fwd ? K::template forward<0, BV, CV>(p, b, e)
               : K::template backward<0, BV, CV>(p, b, e);
  }
  switch (p.dstate) {
    case 1:
      return fwd ? K::template forward<1, BV, CV>(p, b, e)
                 : K::template backward<1, BV, CV>(p, b, e);
    case 8:
      return fwd ? K::template forward<8, BV, CV>(p, b, e)
                 : K::template backward<8, BV, CV>(p, b, e);
    case 16:
      return fwd ? K::template forward<16, BV, CV>(p, b, e)
                 : K::template backward<16, BV, CV>(p, b, e);
    default:
      return fwd ? K::template forward<0, BV, CV>(p, b, e)
                 : K::template backward<0, BV, CV>(p, b, e);
  }
}

template <typename T>
void run(bool fwd, const ScanParams<T>& p, int64_t b, int64_t e) {
  if (p.b_var && p.c_var) return run_bc<T, true, true>(fwd, p, b, e);
  if (p.b_var) return run_bc<T, true, false>(fwd, p, b, e);
  if (p.c_var) return run_bc<T, false, true>(fwd, p, b, e);
  return run_bc<T, false, false>(fwd, p, b, e);
}

inline void fwd_f32(const ScanParams<float>& p, int64_t b, int64_t e) { run(true, p, b, e); }
inline void bwd_f32(const ScanParams<float>& p, int64_t b, int64_t e) { run(false, p, b, e); }
inline void fwd_f64(const ScanParams<double>& p, int64_t b, int64_t e) { run(true, p, b, e); }
inline void bwd_f64(const ScanParams<double>& p, int64_t b, int64_t e) { run(false, p, b, e); }

}  // namespace MMVIM_SCAN_ISA
}  // namespace mmvim_scan

#undef MMVIM_INLINE
#undef MMVIM_UNROLL
