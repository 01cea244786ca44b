// The selective-scan kernels for the avx512 instruction set (see scan_kernel.h).
// Only called after a run-time check that the CPU has avx512f,avx2,fma (binding).
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
// Everything defined below is compiled for avx512f,avx2,fma; the standard headers
// above are not, so no shared inline function gets the wider instructions.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

#define MMVIM_SCAN_ISA avx512
#define MMVIM_VEC_BYTES 64
#include "scan_kernel.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace mmvim_scan {

const KernelTable& kernels_avx512() {
  static const KernelTable table = {
      "avx512", avx512::VecT<float>::W, avx512::VecT<double>::W,
      &avx512::fwd_f32, &avx512::bwd_f32, &avx512::fwd_f64, &avx512::bwd_f64};
  return table;
}

}  // namespace mmvim_scan

#endif  // x86-64
