// Glue shared by every binding file: per-environment data, errors, argument readers, and
// the one way an op runs (now on the JS thread, or later on the libuv pool as a Promise).
#pragma once
#include <napi.h>

#include <cmath>
#include <functional>
#include <string>

#include "peftkit/error.h"
#include "peftkit/kernels.h"
#include "peftkit/ops/gemm_quant.h"
#include "peftkit/tensor.h"

namespace pkb {

// Per-environment state (one per main thread or worker): nothing here is shared.
struct AddonData {
  Napi::FunctionReference tensor_class;
  Napi::FunctionReference error_class;  // PeftkitError, handed in by src/native.ts
};

AddonData& Data(Napi::Env env);

// A JS PeftkitError (or Error before src/native.ts registers the class) with .code set.
Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message);

// Argument readers: each throws pk::Error("E_ARG", ...) naming the argument when it is wrong.
pk::Tensor GetTensor(const Napi::CallbackInfo& info, size_t i, const char* what);
// null/undefined gives an empty tensor (storage == nullptr).
pk::Tensor GetOptionalTensor(const Napi::CallbackInfo& info, size_t i, const char* what);
int64_t GetInt(const Napi::CallbackInfo& info, size_t i, const char* what);
double GetNumber(const Napi::CallbackInfo& info, size_t i, const char* what);
bool GetBool(const Napi::CallbackInfo& info, size_t i, const char* what);
std::string GetString(const Napi::CallbackInfo& info, size_t i, const char* what);
// A quantized weight passed as six arguments from i: format ('nf4' | 'fp4' | 'int8'), codes,
// scales, blocksize, rows, cols.
pk::ops::QuantWeightTensors GetQuantWeight(const Napi::CallbackInfo& info, size_t i);
pk::DType ParseDType(const std::string& s);
// The compute precision of an op ('f32' | 'bf16').
pk::Compute GetCompute(const Napi::CallbackInfo& info, size_t i);
pk::Device ParseDevice(const std::string& s);

// An op binding parses its arguments on the JS thread and returns the work to run. Work
// returns a number (e.g. a norm) or NaN for "no result" (undefined in JS).
using Work = std::function<double()>;
inline const double kNone = std::nan("");  // what a Work returns when the op has no result
using Prepare = std::function<Work(const Napi::CallbackInfo&)>;

// Defines exports[name](...) that runs the work now, and exports[name + "Async"](...) that runs
// it on the libuv thread pool and returns a Promise, so a long kernel never blocks the caller.
// Tensors captured by the work keep their storage alive until it finishes.
void DefineOp(Napi::Env env, Napi::Object exports, const char* name, Prepare prepare);

// Runs `body`, turning a pk::Error into a PeftkitError with its code (other exceptions: E_INTERNAL).
Napi::Value Rethrow(Napi::Env env, const std::function<Napi::Value()>& body);

// Registration of each binding file (called from addon.cc).
void InitTensor(Napi::Env env, Napi::Object exports);
void InitGemm(Napi::Env env, Napi::Object exports);
void InitLinear(Napi::Env env, Napi::Object exports);
void InitTransformerOps(Napi::Env env, Napi::Object exports);
void InitAttention(Napi::Env env, Napi::Object exports);
void InitLoss(Napi::Env env, Napi::Object exports);
void InitOptim(Napi::Env env, Napi::Object exports);
void InitBias(Napi::Env env, Napi::Object exports);
void InitColscale(Napi::Env env, Napi::Object exports);
void InitOptim8(Napi::Env env, Napi::Object exports);
void InitQuant(Napi::Env env, Napi::Object exports);
void InitGemmQuant(Napi::Env env, Napi::Object exports);
void InitLlmInt8(Napi::Env env, Napi::Object exports);
void InitDistributed(Napi::Env env, Napi::Object exports);

}  // namespace pkb
