#include "common.h"
#include "peftkit/ops/index_fault.h"
#include "peftkit/ops/loss.h"

namespace pkb {

namespace {
int32_t GetInt32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  int64_t v = GetInt(info, i, what);
  if (v < INT32_MIN || v > INT32_MAX) pk::fail("E_ARG", std::string(what) + ": expected a 32-bit integer, got " + std::to_string(v));
  return int32_t(v);
}
}  // namespace

void InitLoss(Napi::Env env, Napi::Object exports) {
  // crossEntropy(losses, dlogits | null, logits, targets, ignoreIndex, gradScale)
  DefineOp(env, exports, "crossEntropy", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor losses = GetTensor(info, 0, "losses"), dlogits = GetOptionalTensor(info, 1, "dlogits");
    pk::Tensor logits = GetTensor(info, 2, "logits"), targets = GetTensor(info, 3, "targets");
    int32_t ignore = GetInt32(info, 4, "ignoreIndex");
    float scale = float(GetNumber(info, 5, "gradScale"));
    return [=]() {
      pk::ops::cross_entropy(losses, dlogits, logits, targets, ignore, scale);
      return kNone;
    };
  });
  // linearCrossEntropy(losses, dH | null, dW | null, H, W, targets, ignoreIndex, gradScale, chunkRows, compute, fault?)
  DefineOp(env, exports, "linearCrossEntropy", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor losses = GetTensor(info, 0, "losses"), dH = GetOptionalTensor(info, 1, "dH"),
               dW = GetOptionalTensor(info, 2, "dW");
    pk::Tensor H = GetTensor(info, 3, "H"), W = GetTensor(info, 4, "W"), targets = GetTensor(info, 5, "targets");
    int32_t ignore = GetInt32(info, 6, "ignoreIndex");
    float scale = float(GetNumber(info, 7, "gradScale"));
    int64_t chunk = GetInt(info, 8, "chunkRows");
    pk::Compute compute = GetCompute(info, 9);
    pk::Tensor fault = GetOptionalTensor(info, 10, "fault");
    return [=]() {
      pk::ops::linear_cross_entropy(losses, dH, dW, H, W, targets, ignore, scale, chunk, compute, fault);
      return kNone;
    };
  });
  // sumInto(acc, x): acc[0] += Σ x, in f64 on their device
  DefineOp(env, exports, "sumInto", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor acc = GetTensor(info, 0, "acc"), x = GetTensor(info, 1, "x");
    return [=]() {
      pk::ops::sum_into(acc, x);
      return kNone;
    };
  });
  // raiseIndexFault(record: Float64Array): throws the error a set fault record stands for.
  exports.Set("raiseIndexFault", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Rethrow(info.Env(), [&]() -> Napi::Value {
      if (info.Length() < 1 || !info[0].IsTypedArray() ||
          info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
          info[0].As<Napi::Float64Array>().ElementLength() != size_t(pk::kIndexFaultDoubles))
        pk::fail("E_ARG", "record: expected a Float64Array of " + std::to_string(pk::kIndexFaultDoubles) + " values");
      pk::ops::raise_index_fault(info[0].As<Napi::Float64Array>().Data());
      return info.Env().Undefined();
    });
  }));
}

}  // namespace pkb
