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
  // llmInt8Forward(Y, XA | null, X, Xa | null, format, codes, scales, blocksize, rows, cols, threshold,
  //                A | null, B | null, bias | null, scale)
  DefineOp(env, exports, "llmInt8Forward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor Y = GetTensor(info, 0, "Y"), XA = GetOptionalTensor(info, 1, "XA"), X = GetTensor(info, 2, "X");
    pk::Tensor Xa = GetOptionalTensor(info, 3, "dropoutInput");
    pk::ops::QuantWeightTensors W = GetQuantWeight(info, 4);
    float threshold = float(GetNumber(info, 10, "threshold"));
    pk::Tensor A = GetOptionalTensor(info, 11, "A"), B = GetOptionalTensor(info, 12, "B");
    pk::Tensor bias = GetOptionalTensor(info, 13, "bias");
    float s = float(GetNumber(info, 14, "scale"));
    return [=]() {
      pk::ops::llm_int8_forward(Y, XA, X, Xa, W, threshold, A, B, bias, s);
      return kNone;
    };
  });
}

}  // namespace pkb
