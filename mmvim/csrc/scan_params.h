// Plain-C++ interface between the torch binding (selective_scan_cpu.cpp) and
// the vectorised kernels (scan_kernel.h, compiled once per instruction set).
// No torch headers here: the kernel translation units stay small and fast to
// compile, and only see raw pointers and sizes.
#pragma once

#include <cstdint>

namespace mmvim_scan {

// Time steps per chunk: the forward saves the state entering every chunk and
// the backward recomputes a chunk's states from it, so memory is linear in L.
constexpr int64_t kChunk = 64;

// Work is split into items (batch b, fine group g, channel block k). Fine
// groups are the lcm of B's and C's groups, so a block never straddles a
// group of either; a block is one SIMD vector of channels (the last one of a
// group may be partial and is zero-padded).
template <typename T>
struct ScanParams {
  int64_t batch, dim, len, dstate;
  int64_t groups;            // fine groups: dim / groups channels each
  int64_t blocks_per_group;  // ceil((dim / groups) / lanes)
  // inputs (compute dtype T, contiguous)
  const T* u;       // (batch, dim, len)
  const T* delta;   // (batch, dim, len)
  const T* A;       // (dim, N)
  const T* B;       // const: (dim, N); var: (batch, b_groups, len, N)
  const T* C;       // same for C
  bool b_var, c_var;
  int64_t b_groups, c_groups;  // 1 when constant
  const T* D;       // (dim,) or null
  const T* z;       // (batch, dim, len) or null
  const T* bias;    // (dim,) or null
  bool softplus;
  // (rev_groups,) flags or null: channel d runs backwards in time (from
  // L - 1 down to 0) when reverse[d / (dim / rev_groups)] is set
  const uint8_t* reverse;
  int64_t rev_groups;  // 1 when reverse is null
  // forward outputs
  T* out;           // (batch, dim, len)
  T* last;          // (batch, dim, N) or null
  T* states;        // (batch, dim, nchunks, N): state entering each chunk, or null
  // backward inputs
  const T* states_in;  // saved by the forward
  const T* dout;       // (batch, dim, len)
  const T* dlast;      // (batch, dim, N) or null
  // backward outputs: full gradients ...
  T* du;
  T* ddelta;
  T* dz;               // null when z is null
  // ... and per-item partial sums, reduced over items in a fixed order by
  // the binding (so results do not depend on the thread count)
  T* dA_part;          // (batch, dim, N)
  T* dB_part;          // const: (batch, dim, N); var: (items, len, N)
  T* dC_part;
  T* dD_part;          // (batch, dim) or null
  T* dbias_part;       // (batch, dim) or null
};

// The kernels of one instruction set; `range` runs items [begin, end).
struct KernelTable {
  const char* isa;
  int lanes_f32, lanes_f64;
  void (*fwd_f32)(const ScanParams<float>&, int64_t, int64_t);
  void (*bwd_f32)(const ScanParams<float>&, int64_t, int64_t);
  void (*fwd_f64)(const ScanParams<double>&, int64_t, int64_t);
  void (*bwd_f64)(const ScanParams<double>&, int64_t, int64_t);
};

const KernelTable& kernels_generic();
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif

}  // namespace mmvim_scan
