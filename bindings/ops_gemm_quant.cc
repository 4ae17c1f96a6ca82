#include "common.h"
#include "peftkit/ops/gemm_quant.h"

namespace pkb {

void InitGemmQuant(Napi::Env env, Napi::Object exports) {
  // gemmQuant(C, X, format, codes, scales, blocksize, rows, cols, transW, alpha, beta, compute)
  DefineOp(env, exports, "gemmQuant", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor C = GetTensor(info, 0, "C"), X = GetTensor(info, 1, "X");
    pk::ops::QuantWeightTensors W = GetQuantWeight(info, 2);
    bool tw = GetBool(info, 8, "transW");
    float alpha = float(GetNumber(info, 9, "alpha")), beta = float(GetNumber(info, 10, "beta"));
    pk::Compute compute = GetCompute(info, 11);
    return [=]() {
      pk::ops::gemm_quant(C, X, W, tw, alpha, beta, compute);
      return kNone;
    };
  });
}

}  // namespace pkb
