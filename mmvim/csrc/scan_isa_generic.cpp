// The selective-scan kernels for the generic instruction set (see scan_kernel.h).
// Built with the compiler's baseline flags only: the fallback on any CPU.
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

#define MMVIM_SCAN_ISA generic
#define MMVIM_VEC_BYTES 16
#include "scan_kernel.h"

namespace mmvim_scan {

const KernelTable& kernels_generic() {
  static const KernelTable table = {
      "generic", generic::VecT<float>::W, generic::VecT<double>::W,
      &generic::fwd_f32, &generic::bwd_f32, &generic::fwd_f64, &generic::bwd_f64};
  return table;
}

}  // namespace mmvim_scan
