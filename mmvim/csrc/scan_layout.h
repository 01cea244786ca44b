// What the selective-scan kernels need around them, without torch: picking
// the instruction set at run time, checking a call's shapes against the
// kernel's contract and splitting it into work items. Shared by the torch
// binding (selective_scan_cpu.cpp, mmvim._ext) and the onnxruntime custom op
// (ort/selective_scan_ort.cpp), which must agree on all of it.
#pragma once

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "scan_params.h"

namespace mmvim_scan {

// ------------------------------------------------------ instruction sets --
// "avx512", "avx2" or "generic": whether this CPU runs that build.
inline bool cpu_supports(const std::string& isa) {
  if (isa == "generic") return true;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (isa == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#endif
  return false;
}

inline const KernelTable& table_of(const std::string& isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == "avx512") return kernels_avx512();
  if (isa == "avx2") return kernels_avx2();
#endif
  return kernels_generic();
}

// The widest instruction set this CPU runs.
inline std::string best_isa() {
  for (const char* isa : {"avx512", "avx2"})
    if (cpu_supports(isa)) return isa;
  return "generic";
}

// -------------------------------------------------------------- layouts --
using Dims = std::vector<int64_t>;

// The shapes of one call (an absent optional input: has_* false).
struct ScanShapes {
  Dims u, delta, A, B, C, D, z, bias;
  int64_t reverse = 0;  // number of reverse flags, 0 when none
  bool has_D = false, has_z = false, has_bias = false;
};

// How a call is split into items (see ScanParams).
struct Layout {
  int64_t batch, dim, len, dstate, groups, blocks_per_group, items;
  bool b_var, c_var;
  int64_t b_groups, c_groups, rev_groups;
};

// Checks the shapes of a call against the kernel's contract:
//   u, delta, z (batch, dim, L); A (dim, N); B, C constant (dim, N) or
//   time-varying (batch, G, L, N) with G dividing dim; D, bias (dim,);
//   R reverse flags with R dividing dim.
// On success fills *out and returns an empty string, else says what is wrong.
// `lanes`: channels per SIMD vector of the kernels in use.
inline std::string plan_layout(const ScanShapes& s, int lanes, Layout* out) {
  Layout l{};
  if (s.u.size() != 3) return "u must be (batch, dim, L)";
  l.batch = s.u[0];
  l.dim = s.u[1];
  l.len = s.u[2];
  if (s.delta != s.u) return "delta must match u";
  if (s.A.size() != 2 || s.A[0] != l.dim) return "A must be (dim, N)";
  l.dstate = s.A[1];
  int64_t groups = 1;
  for (int i = 0; i < 2; ++i) {
    const Dims& M = i == 0 ? s.B : s.C;
    const std::string name = i == 0 ? "B" : "C";
    const bool var = M.size() == 4;
    int64_t g = 1;
    if (var) {
      if (!(M[0] == l.batch && M[2] == l.len && M[3] == l.dstate && M[1] > 0 &&
            l.dim % M[1] == 0))
        return "time-varying " + name + " must be (batch, G, L, N)";
      g = M[1];
    } else if (!(M.size() == 2 && M[0] == l.dim && M[1] == l.dstate)) {
      return "constant " + name + " must be (dim, N)";
    }
    (i == 0 ? l.b_var : l.c_var) = var;
    (i == 0 ? l.b_groups : l.c_groups) = g;
    groups = std::lcm(groups, g);
  }
  l.rev_groups = 1;
  if (s.reverse) {
    if (s.reverse < 0 || l.dim % s.reverse != 0)
      return "reverse must be (R,) flags with R dividing dim";
    l.rev_groups = s.reverse;
    groups = std::lcm(groups, l.rev_groups);
  }
  l.groups = groups;
  if ((s.has_D && s.D != Dims{l.dim}) || (s.has_bias && s.bias != Dims{l.dim}))
    return "D and delta_bias must be (dim,)";
  if (s.has_z && s.z != s.u) return "z must match u";
  const int64_t per_group = l.dim / l.groups;
  l.blocks_per_group = (per_group + lanes - 1) / lanes;
  l.items = l.batch * l.groups * l.blocks_per_group;
  *out = l;
  return "";
}

// The forward's parameters for `l` and the inputs' data (optional ones may
// be null; reverse: rev_groups flags or null). Outputs are left null.
template <typename T>
ScanParams<T> make_params(const Layout& l, const T* u, const T* delta, const T* A,
                          const T* B, const T* C, const T* D, const T* z,
                          const T* bias, bool softplus, const uint8_t* reverse) {
  ScanParams<T> p{};
  p.batch = l.batch;
  p.dim = l.dim;
  p.len = l.len;
  p.dstate = l.dstate;
  p.groups = l.groups;
  p.blocks_per_group = l.blocks_per_group;
  p.u = u;
  p.delta = delta;
  p.A = A;
  p.B = B;
  p.C = C;
  p.b_var = l.b_var;
  p.c_var = l.c_var;
  p.b_groups = l.b_groups;
  p.c_groups = l.c_groups;
  p.D = D;
  p.z = z;
  p.bias = bias;
  p.softplus = softplus;
  p.reverse = reverse;
  p.rev_groups = l.rev_groups;
  return p;
}

}  // namespace mmvim_scan
