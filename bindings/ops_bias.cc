#include "common.h"
#include "peftkit/ops/bias.h"

namespace pkb {

void InitBias(Napi::Env env, Napi::Object exports) {
  // biasAdd(y, bias)
  DefineOp(env, exports, "biasAdd", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor y = GetTensor(info, 0, "y"), b = GetTensor(info, 1, "bias");
    return [=]() {
      pk::ops::bias_add(y, b);
      return kNone;
    };
  });
  // biasBackward(dbias, dy)
  DefineOp(env, exports, "biasBackward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor db = GetTensor(info, 0, "dbias"), dy = GetTensor(info, 1, "dy");
    return [=]() {
      pk::ops::bias_backward(db, dy);
      return kNone;
    };
  });
}

}  // namespace pkb
