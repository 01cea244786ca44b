// The selective-scan kernels for the avx2 instruction set (see scan_kernel.h).
// Only called after a run-time check that the CPU has avx2,fma (binding).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>  // the reciprocal estimates (recip)
#endif

#include "scan_params.h"

#if defined(__x86_64__) || defined(_M_X64)
// Everything defined below is compiled for avx2,fma; the standard headers
// above are not, so no shared inline function gets the wider instructions.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define MMVIM_SCAN_ISA avx2
#define MMVIM_VEC_BYTES 32
#include "scan_kernel.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace mmvim_scan {

const KernelTable& kernels_avx2() {
  static const KernelTable table = {
      "avx2", avx2::VecT<float>::W, avx2::VecT<double>::W,
      &avx2::fwd_f32, &avx2::bwd_f32, &avx2::fwd_f64, &avx2::bwd_f64};
  return table;
}

}  // namespace mmvim_scan

#endif  // x86-64
