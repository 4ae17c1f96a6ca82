#include "common.h"
#include "peftkit/ops/llm_int8.h"

namespace pkb {

void InitLlmInt8(Napi::Env env, Napi::Object exports) {
  // quantizeInt8Vectorwise(CA, SCA, outlierCols, X, threshold)
  DefineOp(env, exports, "quantizeInt8Vectorwise", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor CA = GetTensor(info, 0, "CA"), SCA = GetTensor(info, 1, "SCA");
    pk::Tensor outlier = GetTensor(info, 2, "outlierCols"), X = GetTensor(info, 3, "X");
    float threshold = float(GetNumber(info, 4, "threshold"));
    return [=]() {
      pk::ops::quantize_int8_vectorwise(CA, SCA, outlier, X, threshold);
      return kNone;
    };
  });
}

}  // namespace pkb
