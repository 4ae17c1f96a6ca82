#include "common.h"
#include "peftkit/ops/gemm_quant.h"

namespace pkb {

namespace {
pk::QuantFormat GetQuantFormat(const Napi::CallbackInfo& info, size_t i) {
  const std::string s = GetString(info, i, "format");
  if (s == "nf4") return pk::QuantFormat::NF4;
  if (s == "fp4") return pk::QuantFormat::FP4;
  if (s == "int8") return pk::QuantFormat::INT8;
  pk::fail("E_ARG", "format: expected 'nf4', 'fp4' or 'int8', got '" + s + "'");
}
}  // namespace

void InitGemmQuant(Napi::Env env, Napi::Object exports) {
  // gemmQuant(C, X, format, codes, scales, blocksize, rows, cols, transW, alpha, beta)
  DefineOp(env, exports, "gemmQuant", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor C = GetTensor(info, 0, "C"), X = GetTensor(info, 1, "X");
    pk::ops::QuantWeightTensors W;
    W.format = GetQuantFormat(info, 2);
    W.codes = GetTensor(info, 3, "W codes");
    W.scales = GetTensor(info, 4, "W scales");
    W.blocksize = GetInt(info, 5, "blocksize");
    W.rows = GetInt(info, 6, "rows");
    W.cols = GetInt(info, 7, "cols");
    bool tw = GetBool(info, 8, "transW");
    float alpha = float(GetNumber(info, 9, "alpha")), beta = float(GetNumber(info, 10, "beta"));
    return [=]() {
      pk::ops::gemm_quant(C, X, W, tw, alpha, beta);
      return kNone;
    };
  });
}

}  // namespace pkb
