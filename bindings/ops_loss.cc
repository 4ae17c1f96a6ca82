#include "common.h"
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
  // linearCrossEntropy(losses, dH | null, dW | null, H, W, targets, ignoreIndex, gradScale, chunkRows, compute)
  DefineOp(env, exports, "linearCrossEntropy", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor losses = GetTensor(info, 0, "losses"), dH = GetOptionalTensor(info, 1, "dH"),
               dW = GetOptionalTensor(info, 2, "dW");
    pk::Tensor H = GetTensor(info, 3, "H"), W = GetTensor(info, 4, "W"), targets = GetTensor(info, 5, "targets");
    int32_t ignore = GetInt32(info, 6, "ignoreIndex");
    float scale = float(GetNumber(info, 7, "gradScale"));
    int64_t chunk = GetInt(info, 8, "chunkRows");
    pk::Compute compute = GetCompute(info, 9);
    return [=]() {
      pk::ops::linear_cross_entropy(losses, dH, dW, H, W, targets, ignore, scale, chunk, compute);
      return kNone;
    };
  });
}

}  // namespace pkb
