// mmvim's compiled CPU selective scan as an onnxruntime custom operator,
// `mmvim.ai::SelectiveScan` (opset 1 of the domain), for files written by
// `tools/deploy/export_onnx.py --scan-op mmvim` (docs/deploy.md).
//
//   inputs  u, delta          float32 (batch, dim, L)
//           A                 float32 (dim, N)
//           B, C              float32 (dim, N) constant, or (batch, G, L, N)
//                             time-varying with G groups of dim / G channels
//           D (optional)      float32 (dim,)   skip: y += D * u
//           z (optional)      float32 (batch, dim, L)   gate: y *= silu(z)
//           delta_bias (opt.) float32 (dim,)
//   attributes delta_softplus int (0/1): step = softplus(delta + delta_bias)
//              reverse ints (R flags, R dividing dim; optional): the channels
//                      of block r run backwards in time when reverse[r] != 0
//   output  y                 float32 (batch, dim, L)
//
// The arithmetic is mmvim._ext's forward (scan_kernel.h, the same sources,
// the same run-time choice of instruction set: the widest this CPU runs, or
// MMVIM_CPU_ISA=avx512|avx2|generic), so a file gives what the PyTorch model
// gives with the cpu backend. Work items (batch, group, block of channels)
// run on onnxruntime's intra-op threads. Neither torch nor onnxruntime is
// linked: onnxruntime hands its API table to RegisterCustomOps (ort_api.h).
#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "../scan_layout.h"
#include "../scan_params.h"
#include "ort_api.h"

namespace mmvim_ort {
namespace {

using mmvim_scan::Dims;
using mmvim_scan::KernelTable;
using mmvim_scan::Layout;
using mmvim_scan::ScanParams;
using mmvim_scan::ScanShapes;

constexpr const char* kDomain = "mmvim.ai";
constexpr const char* kOpName = "SelectiveScan";
constexpr size_t kInputs = 8;  // u, delta, A, B, C, D, z, delta_bias
constexpr size_t kFirstOptional = 5;

const KernelTable* g_table = nullptr;  // chosen in RegisterCustomOps

struct Kernel {
  Api api;
  bool softplus = false;
  std::vector<uint8_t> reverse;  // empty: every block runs forwards
};

std::string error_text(const Api& api, OrtStatus* s) {
  std::string msg = api.GetErrorMessage(s);
  api.ReleaseStatus(s);
  return msg;
}

// Runs `call`; a failure becomes an onnxruntime status naming the op.
template <typename F>
OrtStatus* guarded(const Api& api, F&& call) {
  try {
    call();
    return nullptr;
  } catch (const std::exception& e) {
    const std::string msg = std::string(kDomain) + "::" + kOpName + ": " + e.what();
    return api.CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
  }
}

void check(const Api& api, OrtStatus* s) {
  if (s) throw std::runtime_error(error_text(api, s));
}

OrtStatus* MMVIM_ORT_CALL create_kernel(const OrtCustomOp*, const OrtApi* raw,
                                        const OrtKernelInfo* info, void** out) {
  Api api(raw);
  return guarded(api, [&] {
    auto* k = new Kernel{api, false, {}};
    int64_t sp = 0;
    if (OrtStatus* s = api.KernelInfoGetAttribute_int64(info, "delta_softplus", &sp))
      api.ReleaseStatus(s);  // absent: no softplus
    k->softplus = sp != 0;
    size_t n = 0;
    if (OrtStatus* s = api.KernelInfoGetAttributeArray_int64(info, "reverse", nullptr, &n)) {
      api.ReleaseStatus(s);  // absent: no reversed block
      n = 0;
    }
    if (n) {
      std::vector<int64_t> flags(n);
      if (OrtStatus* s = api.KernelInfoGetAttributeArray_int64(info, "reverse", flags.data(), &n)) {
        delete k;
        check(api, s);
      }
      if (std::any_of(flags.begin(), flags.end(), [](int64_t f) { return f != 0; }))
        for (int64_t f : flags) k->reverse.push_back(f != 0);
    }
    *out = k;
  });
}

void MMVIM_ORT_CALL destroy_kernel(void* k) { delete static_cast<Kernel*>(k); }

// An input's data and shape (data null for an absent optional input).
struct Input {
  const float* data = nullptr;
  Dims dims;
};

Input input_of(const Api& api, const OrtKernelContext* ctx, size_t count, size_t i) {
  static const char* names[kInputs] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"};
  Input in;
  const OrtValue* v = nullptr;
  if (i < count) check(api, api.KernelContext_GetInput(ctx, i, &v));
  if (!v) {
    if (i < kFirstOptional) throw std::runtime_error(std::string("input ") + names[i] + " is missing");
    return in;
  }
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, api.GetTensorTypeAndShape(v, &info));
  ONNXTensorElementDataType type;
  size_t rank = 0;
  OrtStatus* s = api.GetTensorElementType(info, &type);
  if (!s) s = api.GetDimensionsCount(info, &rank);
  if (!s) {
    in.dims.resize(rank);
    s = api.GetDimensions(info, in.dims.data(), rank);
  }
  api.ReleaseTensorTypeAndShapeInfo(info);
  check(api, s);
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw std::runtime_error(std::string(names[i]) + " must be float32");
  void* data = nullptr;
  check(api, api.GetTensorMutableData(const_cast<OrtValue*>(v), &data));
  in.data = static_cast<const float*>(data);
  return in;
}

struct Work {
  const ScanParams<float>* p;
  void (*fn)(const ScanParams<float>&, int64_t, int64_t);
};

void run_item(void* data, size_t i) {
  const Work* w = static_cast<const Work*>(data);
  w->fn(*w->p, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1);
}

OrtStatus* MMVIM_ORT_CALL compute(void* kernel, OrtKernelContext* ctx) {
  const Kernel& k = *static_cast<Kernel*>(kernel);
  const Api& api = k.api;
  return guarded(api, [&] {
    size_t count = 0;
    check(api, api.KernelContext_GetInputCount(ctx, &count));
    Input in[kInputs];
    for (size_t i = 0; i < kInputs; ++i) in[i] = input_of(api, ctx, count, i);
    ScanShapes s;
    s.u = in[0].dims;
    s.delta = in[1].dims;
    s.A = in[2].dims;
    s.B = in[3].dims;
    s.C = in[4].dims;
    s.D = in[5].dims;
    s.z = in[6].dims;
    s.bias = in[7].dims;
    s.has_D = in[5].data != nullptr;
    s.has_z = in[6].data != nullptr;
    s.has_bias = in[7].data != nullptr;
    s.reverse = static_cast<int64_t>(k.reverse.size());
    Layout l;
    const std::string err = mmvim_scan::plan_layout(s, g_table->lanes_f32, &l);
    if (!err.empty()) throw std::runtime_error(err);
    OrtValue* out = nullptr;
    check(api, api.KernelContext_GetOutput(ctx, 0, s.u.data(), s.u.size(), &out));
    void* y = nullptr;
    check(api, api.GetTensorMutableData(out, &y));
    ScanParams<float> p = mmvim_scan::make_params<float>(
        l, in[0].data, in[1].data, in[2].data, in[3].data, in[4].data, in[5].data, in[6].data,
        in[7].data, k.softplus, k.reverse.empty() ? nullptr : k.reverse.data());
    p.out = static_cast<float*>(y);
    if (l.items == 0 || l.len == 0) return;
    Work w{&p, g_table->fwd_f32};
    check(api, api.KernelContext_ParallelFor(ctx, run_item, static_cast<size_t>(l.items), 0, &w));
  });
}

const OrtApi* g_api = nullptr;  // set in RegisterCustomOps

// the output has u's type and shape

OrtStatus* MMVIM_ORT_CALL infer_output_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  Api api(g_api);
  OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
  if (OrtStatus* s = api.ShapeInferContext_GetInputTypeShape(ctx, 0, &info)) return s;
  return api.ShapeInferContext_SetOutputTypeShape(ctx, 0, info);
}

const char* MMVIM_ORT_CALL op_name(const OrtCustomOp*) { return kOpName; }
const char* MMVIM_ORT_CALL op_provider(const OrtCustomOp*) { return nullptr; }  // CPU
ONNXTensorElementDataType MMVIM_ORT_CALL op_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t MMVIM_ORT_CALL op_inputs(const OrtCustomOp*) { return kInputs; }
size_t MMVIM_ORT_CALL op_outputs(const OrtCustomOp*) { return 1; }
OrtCustomOpInputOutputCharacteristic MMVIM_ORT_CALL input_kind(const OrtCustomOp*, size_t i) {
  return i < kFirstOptional ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}
OrtCustomOpInputOutputCharacteristic MMVIM_ORT_CALL output_kind(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType MMVIM_ORT_CALL input_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int MMVIM_ORT_CALL one(const OrtCustomOp*) { return 1; }
int MMVIM_ORT_CALL since_version(const OrtCustomOp*) { return 1; }
int MMVIM_ORT_CALL until_version(const OrtCustomOp*) { return INT_MAX; }

OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = kApiVersion;
  op.GetName = op_name;
  op.GetExecutionProviderType = op_provider;
  op.GetInputType = op_type;
  op.GetInputTypeCount = op_inputs;
  op.GetOutputType = op_type;
  op.GetOutputTypeCount = op_outputs;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = input_kind;
  op.GetOutputCharacteristic = output_kind;
  op.GetInputMemoryType = input_memory;
  op.GetVariadicInputMinArity = one;
  op.GetVariadicInputHomogeneity = one;
  op.GetVariadicOutputMinArity = one;
  op.GetVariadicOutputHomogeneity = one;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.InferOutputShapeFn = infer_output_shape;
  op.GetStartVersion = since_version;
  op.GetEndVersion = until_version;
  return op;
}

const OrtCustomOp g_op = make_op();  // onnxruntime keeps a pointer to it

// MMVIM_CPU_ISA or the widest instruction set this CPU runs; "" and *why
// when the variable names one it cannot run.
const KernelTable* choose_isa(std::string* why) {
  const char* env = std::getenv("MMVIM_CPU_ISA");
  std::string want = env ? env : "";
  std::transform(want.begin(), want.end(), want.begin(), ::tolower);
  if (want.empty() || want == "auto") return &mmvim_scan::table_of(mmvim_scan::best_isa());
  if (want != "avx512" && want != "avx2" && want != "generic") {
    *why = "MMVIM_CPU_ISA=" + want + " is not an instruction set of mmvim's kernels; use " +
           "avx512, avx2, generic or auto";
    return nullptr;
  }
  if (!mmvim_scan::cpu_supports(want)) {
    *why = "MMVIM_CPU_ISA=" + want + ": this CPU cannot run the " + want + " kernels";
    return nullptr;
  }
  return &mmvim_scan::table_of(want);
}

}  // namespace
}  // namespace mmvim_ort

extern "C" {

// The entry point onnxruntime calls for register_custom_ops_library(path):
// adds the mmvim.ai domain with SelectiveScan to the session options.
__attribute__((visibility("default"))) OrtStatus* MMVIM_ORT_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  using namespace mmvim_ort;
  const OrtApi* raw = base->GetApi(kApiVersion);
  if (!raw) {
    // an older onnxruntime: its own first API version can still report it
    const OrtApi* old = base->GetApi(1);
    const std::string msg = std::string("mmvim's custom-op library needs onnxruntime >= 1.17 "
                                        "(C API version 17); this is onnxruntime ") +
                            base->GetVersionString();
    return old ? Api(old).CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Api api(raw);
  g_api = raw;
  std::string why;
  const mmvim_scan::KernelTable* table = choose_isa(&why);
  if (!table) return api.CreateStatus(ORT_INVALID_ARGUMENT, why.c_str());
  g_table = table;
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* s = api.CreateCustomOpDomain(kDomain, &domain)) return s;
  if (OrtStatus* s = api.CustomOpDomain_Add(domain, &g_op)) return s;
  // the domain must outlive every session created with these options, so it
  // is never released (one small object per registration)
  return api.AddCustomOpDomain(options, domain);
}

// Which instruction set the kernels run (for tests and `python -m mmvim.env`).
__attribute__((visibility("default"))) const char* mmvim_ort_isa() {
  return mmvim_ort::g_table ? mmvim_ort::g_table->isa : "";
}

}  // extern "C"
