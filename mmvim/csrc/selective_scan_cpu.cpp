// mmvim._ext: the compiled CPU selective scan (forward and backward).
//
// This file is the torch binding: it checks shapes, allocates outputs, splits
// the work into (batch, group, channel block) items with at::parallel_for and
// reduces the per-item partial gradients in a fixed order, so results do not
// depend on the number of threads. The arithmetic is in scan_kernel.h,
// compiled once per instruction set (scan_isa_*.cpp); the fastest one the CPU
// supports is picked at run time (cpuid), so a build is portable between x86
// machines. Inputs arrive already in the compute dtype (float32 or float64),
// contiguous, with time-varying B/C as (batch, G, L, N): the Python wrapper
// (mmvim/ops/selective_scan_cpu.py) does the casts and layout changes, which
// autograd then differentiates.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "scan_layout.h"
#include "scan_params.h"

namespace mmvim_scan {
namespace {

const KernelTable* g_table = nullptr;

const KernelTable& table() {
  if (!g_table) g_table = &table_of(best_isa());
  return *g_table;
}

// isa: 'auto' (the best this CPU runs), 'avx512', 'avx2' or 'generic'.
std::string set_isa(const std::string& isa) {
  const std::string name = isa == "auto" ? best_isa() : isa;
  TORCH_CHECK(name == "avx512" || name == "avx2" || name == "generic",
              "mmvim._ext.set_isa: unknown instruction set '", isa,
              "'; use auto, avx512, avx2 or generic");
  TORCH_CHECK(cpu_supports(name), "mmvim._ext.set_isa: this CPU cannot run the ",
              name, " kernels");
  g_table = &table_of(name);
  return name;
}

std::string isa() { return table().isa; }

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "mmvim._ext: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "mmvim._ext: ", name, " has dtype ",
              t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "mmvim._ext: ", name, " must be contiguous");
}

Dims dims_of(const at::Tensor& t) { return Dims(t.sizes().begin(), t.sizes().end()); }

Layout layout(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
              const at::Tensor& B, const at::Tensor& C,
              const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
              const c10::optional<at::Tensor>& bias,
              const c10::optional<at::Tensor>& reverse) {
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "mmvim._ext: the scan computes in float32 or float64, got ", dtype);
  check_tensor(u, "u", dtype);
  check_tensor(delta, "delta", dtype);
  check_tensor(A, "A", dtype);
  check_tensor(B, "B", dtype);
  check_tensor(C, "C", dtype);
  ScanShapes s;
  s.u = dims_of(u);
  s.delta = dims_of(delta);
  s.A = dims_of(A);
  s.B = dims_of(B);
  s.C = dims_of(C);
  if (reverse.has_value()) {
    check_tensor(*reverse, "reverse", at::kBool);
    TORCH_CHECK(reverse->dim() == 1 && reverse->size(0) > 0,
                "mmvim._ext: reverse must be (R,) flags with R dividing dim");
    s.reverse = reverse->size(0);
  }
  for (const auto* opt : {&D, &bias, &z}) {
    if (!opt->has_value()) continue;
    const char* name = opt == &D ? "D" : opt == &bias ? "delta_bias" : "z";
    check_tensor(**opt, name, dtype);
    (opt == &D ? s.D : opt == &bias ? s.bias : s.z) = dims_of(**opt);
    (opt == &D ? s.has_D : opt == &bias ? s.has_bias : s.has_z) = true;
  }
  const int lanes = dtype == at::kFloat ? table().lanes_f32 : table().lanes_f64;
  Layout l;
  const std::string err = plan_layout(s, lanes, &l);
  TORCH_CHECK(err.empty(), "mmvim._ext: ", err);
  return l;
}

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

template <typename T>
ScanParams<T> params(const Layout& l, const at::Tensor& u, const at::Tensor& delta,
                     const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                     const c10::optional<at::Tensor>& D,
                     const c10::optional<at::Tensor>& z,
                     const c10::optional<at::Tensor>& bias, bool softplus,
                     const c10::optional<at::Tensor>& reverse) {
  return make_params<T>(
      l, u.data_ptr<T>(), delta.data_ptr<T>(), A.data_ptr<T>(), B.data_ptr<T>(),
      C.data_ptr<T>(), ptr_or_null<T>(D), ptr_or_null<T>(z), ptr_or_null<T>(bias),
      softplus,
      reverse.has_value() ? reinterpret_cast<const uint8_t*>(reverse->data_ptr<bool>())
                          : nullptr);
}

template <typename T>
void (*kernel_fn(bool forward))(const ScanParams<T>&, int64_t, int64_t) {
  if constexpr (std::is_same<T, float>::value) {
    return forward ? table().fwd_f32 : table().bwd_f32;
  } else {
    return forward ? table().fwd_f64 : table().bwd_f64;
  }
}

// out[o][m] = sum_{j < count} part[o * count + j][m], j in increasing order
// for every element, whatever the number of threads.
template <typename T>
void reduce_parts(const T* part, T* out, int64_t outer, int64_t count, int64_t m) {
  constexpr int64_t kSpan = 4096;
  const int64_t spans = (m + kSpan - 1) / kSpan;
  at::parallel_for(0, outer * spans, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o = i / spans, m0 = (i % spans) * kSpan;
      const int64_t m1 = std::min(m, m0 + kSpan);
      T* dst = out + o * m;
      const T* src = part + o * count * m;
      for (int64_t k = m0; k < m1; ++k) dst[k] = src[k];
      for (int64_t j = 1; j < count; ++j) {
        const T* s = src + j * m;
        for (int64_t k = m0; k < m1; ++k) dst[k] += s[k];
      }
    }
  });
}

// Returns (out, last_state, chunk_states); chunk_states is empty unless
// save_states (needed by the backward). `reverse` (R,) bool: channel d runs
// backwards in time when reverse[d / (dim / R)] (last_state is then the
// state after step 0).
std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta,
                            const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const c10::optional<at::Tensor>& D,
                            const c10::optional<at::Tensor>& z,
                            const c10::optional<at::Tensor>& bias, bool softplus,
                            bool save_states, const c10::optional<at::Tensor>& reverse) {
  const Layout l = layout(u, delta, A, B, C, D, z, bias, reverse);
  const int64_t nchunks = (l.len + kChunk - 1) / kChunk;
  at::Tensor out = at::empty_like(u);
  at::Tensor last = at::empty({l.batch, l.dim, l.dstate}, u.options());
  at::Tensor states = save_states
                          ? at::empty({l.batch, l.dim, nchunks, l.dstate}, u.options())
                          : at::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mmvim_selective_scan_fwd", [&] {
    ScanParams<scalar_t> p =
        params<scalar_t>(l, u, delta, A, B, C, D, z, bias, softplus, reverse);
    p.out = out.data_ptr<scalar_t>();
    p.last = last.data_ptr<scalar_t>();
    p.states = save_states ? states.data_ptr<scalar_t>() : nullptr;
    auto fn = kernel_fn<scalar_t>(true);
    at::parallel_for(0, l.items, 1, [&](int64_t b, int64_t e) { fn(p, b, e); });
  });
  return {out, last, states};
}

// Returns (du, ddelta, dA, dB, dC, dD, dz, dbias) in the layouts of the
// inputs (dB/dC (batch, G, L, N) when time-varying); dD, dz, dbias are
// empty when the input was absent.
std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta,
                            const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const c10::optional<at::Tensor>& D,
                            const c10::optional<at::Tensor>& z,
                            const c10::optional<at::Tensor>& bias, bool softplus,
                            const at::Tensor& states, const at::Tensor& dout,
                            const c10::optional<at::Tensor>& dlast,
                            const c10::optional<at::Tensor>& reverse) {
  const Layout l = layout(u, delta, A, B, C, D, z, bias, reverse);
  const auto dtype = u.scalar_type();
  const int64_t nchunks = (l.len + kChunk - 1) / kChunk;
  check_tensor(states, "chunk states", dtype);
  TORCH_CHECK(states.numel() == l.batch * l.dim * nchunks * l.dstate,
              "mmvim._ext: chunk states do not match the inputs");
  check_tensor(dout, "dout", dtype);
  TORCH_CHECK(dout.sizes() == u.sizes(), "mmvim._ext: dout must match u");
  if (dlast.has_value()) {
    check_tensor(*dlast, "dlast", dtype);
    TORCH_CHECK(dlast->numel() == l.batch * l.dim * l.dstate,
                "mmvim._ext: dlast must be (batch, dim, N)");
  }
  auto opts = u.options();
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  at::Tensor dz = z.has_value() ? at::empty_like(u) : at::Tensor();
  at::Tensor dA_part = at::empty({l.batch, l.dim, l.dstate}, opts);
  auto part_of = [&](bool var) {
    return var ? at::empty({l.items, l.len, l.dstate}, opts)
               : at::empty({l.batch, l.dim, l.dstate}, opts);
  };
  at::Tensor dB_part = part_of(l.b_var), dC_part = part_of(l.c_var);
  at::Tensor dD_part = D.has_value() ? at::empty({l.batch, l.dim}, opts) : at::Tensor();
  at::Tensor db_part = bias.has_value() ? at::empty({l.batch, l.dim}, opts) : at::Tensor();
  at::Tensor dA = at::empty_like(A), dB = at::empty_like(B), dC = at::empty_like(C);
  at::Tensor dD = D.has_value() ? at::empty_like(*D) : at::Tensor();
  at::Tensor dbias = bias.has_value() ? at::empty_like(*bias) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "mmvim_selective_scan_bwd", [&] {
    using T = scalar_t;
    ScanParams<T> p = params<T>(l, u, delta, A, B, C, D, z, bias, softplus, reverse);
    p.states_in = states.data_ptr<T>();
    p.dout = dout.data_ptr<T>();
    p.dlast = ptr_or_null<T>(dlast);
    p.du = du.data_ptr<T>();
    p.ddelta = ddelta.data_ptr<T>();
    p.dz = z.has_value() ? dz.data_ptr<T>() : nullptr;
    p.dA_part = dA_part.data_ptr<T>();
    p.dB_part = dB_part.data_ptr<T>();
    p.dC_part = dC_part.data_ptr<T>();
    p.dD_part = D.has_value() ? dD_part.data_ptr<T>() : nullptr;
    p.dbias_part = bias.has_value() ? db_part.data_ptr<T>() : nullptr;
    auto fn = kernel_fn<T>(false);
    at::parallel_for(0, l.items, 1, [&](int64_t b, int64_t e) { fn(p, b, e); });
    // fixed-order reductions of the per-item partial sums
    const int64_t dn = l.dim * l.dstate;
    reduce_parts<T>(p.dA_part, dA.data_ptr<T>(), 1, l.batch, dn);
    for (int i = 0; i < 2; ++i) {
      const bool var = i == 0 ? l.b_var : l.c_var;
      const T* part = i == 0 ? p.dB_part : p.dC_part;
      T* dst = (i == 0 ? dB : dC).data_ptr<T>();
      if (var) {
        const int64_t gm = i == 0 ? l.b_groups : l.c_groups;
        reduce_parts<T>(part, dst, l.batch * gm, l.items / (l.batch * gm),
                        l.len * l.dstate);
      } else {
        reduce_parts<T>(part, dst, 1, l.batch, dn);
      }
    }
    if (D.has_value()) reduce_parts<T>(p.dD_part, dD.data_ptr<T>(), 1, l.batch, l.dim);
    if (bias.has_value())
      reduce_parts<T>(p.dbias_part, dbias.data_ptr<T>(), 1, l.batch, l.dim);
  });
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

}  // namespace
}  // namespace mmvim_scan

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mmvim's compiled CPU selective scan (see mmvim/ops/selective_scan_cpu.py)";
  m.def("selective_scan_fwd", &mmvim_scan::fwd, "selective scan forward (CPU)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("delta_bias"), py::arg("softplus"),
        py::arg("save_states"), py::arg("reverse") = py::none());
  m.def("selective_scan_bwd", &mmvim_scan::bwd, "selective scan backward (CPU)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("delta_bias"), py::arg("softplus"),
        py::arg("states"), py::arg("dout"), py::arg("dlast"),
        py::arg("reverse") = py::none());
  m.def("isa", &mmvim_scan::isa, "instruction set of the kernels in use");
  m.def("set_isa", &mmvim_scan::set_isa, py::arg("isa"),
        "use the kernels of one instruction set: auto, avx512, avx2 or generic; "
        "returns the one chosen");
  m.attr("CHUNK") = mmvim_scan::kChunk;
}
