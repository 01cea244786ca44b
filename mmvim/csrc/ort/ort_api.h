// The part of onnxruntime's C API that mmvim's custom-op library uses,
// declared here because no package on the registries ships onnxruntime's
// headers (the onnxruntime wheel has the shared library only).
//
// onnxruntime's C API is ABI-stable: `OrtGetApiBase()->GetApi(v)` returns a
// table of function pointers (`OrtApi`) in which every function keeps its
// slot forever and new functions are only appended, so a library built
// against version v runs on every onnxruntime that supports v. A custom-op
// library receives the `OrtApiBase` in its `RegisterCustomOps` entry point
// and never links to onnxruntime. Here the table is an array of slots; each
// function this library calls is reached through its slot number below
// (counted in the API's published order, the same in every release since the
// version it was added in) with its documented signature.
//
// `OrtCustomOp` is the struct a library fills to describe one operator; its
// members are read by onnxruntime up to the layout of the version the
// library puts in `version` (the members after it may be left unset), in the
// order below.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(_WIN32)
#define MMVIM_ORT_CALL __stdcall
#else
#define MMVIM_ORT_CALL
#endif

extern "C" {

// opaque handles
struct OrtApi;
struct OrtStatus;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtShapeInferContext;

struct OrtApiBase {
  const OrtApi*(MMVIM_ORT_CALL* GetApi)(uint32_t version);
  const char*(MMVIM_ORT_CALL* GetVersionString)();
};

enum OrtErrorCode { ORT_OK = 0, ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };

// ONNX's TensorProto data types (the values this library uses)
enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
};

enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
};

enum OrtMemType { OrtMemTypeDefault = 0 };

struct OrtCustomOp {
  uint32_t version;
  void*(MMVIM_ORT_CALL* CreateKernel)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*);
  const char*(MMVIM_ORT_CALL* GetName)(const OrtCustomOp*);
  const char*(MMVIM_ORT_CALL* GetExecutionProviderType)(const OrtCustomOp*);
  ONNXTensorElementDataType(MMVIM_ORT_CALL* GetInputType)(const OrtCustomOp*, size_t);
  size_t(MMVIM_ORT_CALL* GetInputTypeCount)(const OrtCustomOp*);
  ONNXTensorElementDataType(MMVIM_ORT_CALL* GetOutputType)(const OrtCustomOp*, size_t);
  size_t(MMVIM_ORT_CALL* GetOutputTypeCount)(const OrtCustomOp*);
  void(MMVIM_ORT_CALL* KernelCompute)(void*, OrtKernelContext*);
  void(MMVIM_ORT_CALL* KernelDestroy)(void*);
  // version 8
  OrtCustomOpInputOutputCharacteristic(MMVIM_ORT_CALL* GetInputCharacteristic)(const OrtCustomOp*,
                                                                               size_t);
  OrtCustomOpInputOutputCharacteristic(MMVIM_ORT_CALL* GetOutputCharacteristic)(const OrtCustomOp*,
                                                                                size_t);
  // version 13
  OrtMemType(MMVIM_ORT_CALL* GetInputMemoryType)(const OrtCustomOp*, size_t);
  // version 14
  int(MMVIM_ORT_CALL* GetVariadicInputMinArity)(const OrtCustomOp*);
  int(MMVIM_ORT_CALL* GetVariadicInputHomogeneity)(const OrtCustomOp*);
  int(MMVIM_ORT_CALL* GetVariadicOutputMinArity)(const OrtCustomOp*);
  int(MMVIM_ORT_CALL* GetVariadicOutputHomogeneity)(const OrtCustomOp*);
  // version 16
  OrtStatus*(MMVIM_ORT_CALL* CreateKernelV2)(const OrtCustomOp*, const OrtApi*,
                                             const OrtKernelInfo*, void** kernel);
  OrtStatus*(MMVIM_ORT_CALL* KernelComputeV2)(void*, OrtKernelContext*);
  // version 17
  OrtStatus*(MMVIM_ORT_CALL* InferOutputShapeFn)(const OrtCustomOp*, OrtShapeInferContext*);
  int(MMVIM_ORT_CALL* GetStartVersion)(const OrtCustomOp*);
  int(MMVIM_ORT_CALL* GetEndVersion)(const OrtCustomOp*);
  // later versions (in-place and alias hints), left unset
  void* later[4];
};

}  // extern "C"

namespace mmvim_ort {

// The API version this library asks for: the first with
// KernelContext_ParallelFor and custom-op shape inference (onnxruntime 1.17).
constexpr uint32_t kApiVersion = 17;

// Slot numbers in the OrtApi table.
enum Slot : size_t {
  kCreateStatus = 0,
  kGetErrorMessage = 2,
  kCreateCustomOpDomain = 26,
  kCustomOpDomain_Add = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetTensorElementType = 60,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kKernelInfoGetAttribute_int64 = 86,
  kKernelContext_GetInputCount = 88,
  kKernelContext_GetInput = 90,
  kKernelContext_GetOutput = 91,
  kReleaseStatus = 93,
  kReleaseTensorTypeAndShapeInfo = 99,
  kKernelInfoGetAttributeArray_int64 = 163,
  kShapeInferContext_GetInputTypeShape = 268,
  kShapeInferContext_SetOutputTypeShape = 270,
  kKernelContext_ParallelFor = 274,
};

// The functions above, typed, on one API table.
class Api {
 public:
  explicit Api(const OrtApi* api) : api_(api) {}
  const OrtApi* raw() const { return api_; }

  OrtStatus* CreateStatus(OrtErrorCode code, const char* msg) const {
    return fn<OrtStatus* (*)(OrtErrorCode, const char*)>(kCreateStatus)(code, msg);
  }
  const char* GetErrorMessage(const OrtStatus* s) const {
    return fn<const char* (*)(const OrtStatus*)>(kGetErrorMessage)(s);
  }
  void ReleaseStatus(OrtStatus* s) const { fn<void (*)(OrtStatus*)>(kReleaseStatus)(s); }
  OrtStatus* CreateCustomOpDomain(const char* domain, OrtCustomOpDomain** out) const {
    return fn<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(kCreateCustomOpDomain)(domain, out);
  }
  OrtStatus* CustomOpDomain_Add(OrtCustomOpDomain* d, const OrtCustomOp* op) const {
    return fn<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(kCustomOpDomain_Add)(d, op);
  }
  OrtStatus* AddCustomOpDomain(OrtSessionOptions* o, OrtCustomOpDomain* d) const {
    return fn<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(kAddCustomOpDomain)(o, d);
  }
  OrtStatus* GetTensorMutableData(OrtValue* v, void** out) const {
    return fn<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(v, out);
  }
  OrtStatus* GetTensorTypeAndShape(const OrtValue* v, OrtTensorTypeAndShapeInfo** out) const {
    return fn<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(
        kGetTensorTypeAndShape)(v, out);
  }
  OrtStatus* GetTensorElementType(const OrtTensorTypeAndShapeInfo* i,
                                  ONNXTensorElementDataType* out) const {
    return fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, ONNXTensorElementDataType*)>(
        kGetTensorElementType)(i, out);
  }
  OrtStatus* GetDimensionsCount(const OrtTensorTypeAndShapeInfo* i, size_t* out) const {
    return fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(kGetDimensionsCount)(i,
                                                                                             out);
  }
  OrtStatus* GetDimensions(const OrtTensorTypeAndShapeInfo* i, int64_t* out, size_t n) const {
    return fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(kGetDimensions)(
        i, out, n);
  }
  void ReleaseTensorTypeAndShapeInfo(OrtTensorTypeAndShapeInfo* i) const {
    fn<void (*)(OrtTensorTypeAndShapeInfo*)>(kReleaseTensorTypeAndShapeInfo)(i);
  }
  OrtStatus* KernelInfoGetAttribute_int64(const OrtKernelInfo* k, const char* name,
                                          int64_t* out) const {
    return fn<OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*)>(
        kKernelInfoGetAttribute_int64)(k, name, out);
  }
  OrtStatus* KernelInfoGetAttributeArray_int64(const OrtKernelInfo* k, const char* name,
                                               int64_t* out, size_t* size) const {
    return fn<OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*, size_t*)>(
        kKernelInfoGetAttributeArray_int64)(k, name, out, size);
  }
  OrtStatus* KernelContext_GetInputCount(const OrtKernelContext* c, size_t* out) const {
    return fn<OrtStatus* (*)(const OrtKernelContext*, size_t*)>(kKernelContext_GetInputCount)(c,
                                                                                             out);
  }
  OrtStatus* KernelContext_GetInput(const OrtKernelContext* c, size_t i,
                                    const OrtValue** out) const {
    return fn<OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>(
        kKernelContext_GetInput)(c, i, out);
  }
  OrtStatus* KernelContext_GetOutput(OrtKernelContext* c, size_t i, const int64_t* dims,
                                     size_t n, OrtValue** out) const {
    return fn<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(
        kKernelContext_GetOutput)(c, i, dims, n, out);
  }
  OrtStatus* KernelContext_ParallelFor(const OrtKernelContext* c, void (*f)(void*, size_t),
                                       size_t total, size_t num_batch, void* data) const {
    return fn<OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t,
                             void*)>(kKernelContext_ParallelFor)(c, f, total, num_batch, data);
  }
  OrtStatus* ShapeInferContext_GetInputTypeShape(const OrtShapeInferContext* c, size_t i,
                                                 OrtTensorTypeAndShapeInfo** out) const {
    return fn<OrtStatus* (*)(const OrtShapeInferContext*, size_t, OrtTensorTypeAndShapeInfo**)>(
        kShapeInferContext_GetInputTypeShape)(c, i, out);
  }
  OrtStatus* ShapeInferContext_SetOutputTypeShape(const OrtShapeInferContext* c, size_t i,
                                                  const OrtTensorTypeAndShapeInfo* info) const {
    return fn<OrtStatus* (*)(const OrtShapeInferContext*, size_t,
                             const OrtTensorTypeAndShapeInfo*)>(
        kShapeInferContext_SetOutputTypeShape)(c, i, info);
  }

 private:
  template <typename F>
  F fn(Slot slot) const {
    return reinterpret_cast<const F*>(api_)[slot];
  }
  const OrtApi* api_;
};

}  // namespace mmvim_ort
