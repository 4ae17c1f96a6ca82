#include "common.h"
#include "peftkit/ops/linear.h"

namespace pkb {

namespace {

// The frozen weight in 8 arguments from `i`: W | null, then format, codes, scales, blocksize, rows,
// cols (a quantized weight, when W is null; else nulls and zeros), then threshold | null.
pk::ops::LinearWeight GetLinearWeight(const Napi::CallbackInfo& info, size_t i) {
  pk::ops::LinearWeight W;
  W.dense = GetOptionalTensor(info, i, "W");
  if (!W.quantized()) return W;
  W.quant = GetQuantWeight(info, i + 1);
  if (!info[i + 7].IsNull() && !info[i + 7].IsUndefined()) W.threshold = float(GetNumber(info, i + 7, "threshold"));
  return W;
}

}  // namespace

void InitLinear(Napi::Env env, Napi::Object exports) {
  // linearForward(Y, X, W | null, format, codes, scales, blocksize, rows, cols, threshold | null, bias | null,
  //               A | null, B | null, XA | null, Xa | null, scale, compute)
  DefineOp(env, exports, "linearForward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor Y = GetTensor(info, 0, "Y"), X = GetTensor(info, 1, "X");
    pk::ops::LinearWeight W = GetLinearWeight(info, 2);
    pk::Tensor bias = GetOptionalTensor(info, 10, "bias");
    pk::ops::LowRank lr;
    lr.A = GetOptionalTensor(info, 11, "A");
    lr.B = GetOptionalTensor(info, 12, "B");
    lr.XA = GetOptionalTensor(info, 13, "XA");
    lr.Xa = GetOptionalTensor(info, 14, "dropoutInput");
    lr.s = float(GetNumber(info, 15, "scale"));
    pk::Compute compute = GetCompute(info, 16);
    return [=]() {
      pk::ops::linear_forward(Y, X, W, bias, lr, compute);
      return kNone;
    };
  });
  // linearBackward(dX | null, dY, W | null, format, codes, scales, blocksize, rows, cols, threshold | null,
  //                A | null, B | null, XA | null, Xa | null, dA | null, dB | null, dXa | null, scale, compute)
  DefineOp(env, exports, "linearBackward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor dX = GetOptionalTensor(info, 0, "dX"), dY = GetTensor(info, 1, "dY");
    pk::ops::LinearWeight W = GetLinearWeight(info, 2);
    pk::ops::LowRank lr;
    lr.A = GetOptionalTensor(info, 10, "A");
    lr.B = GetOptionalTensor(info, 11, "B");
    lr.XA = GetOptionalTensor(info, 12, "XA");
    lr.Xa = GetOptionalTensor(info, 13, "Xa");
    lr.dA = GetOptionalTensor(info, 14, "dA");
    lr.dB = GetOptionalTensor(info, 15, "dB");
    lr.dXa = GetOptionalTensor(info, 16, "dDropoutInput");
    lr.s = float(GetNumber(info, 17, "scale"));
    pk::Compute compute = GetCompute(info, 18);
    return [=]() {
      pk::ops::linear_backward(dX, dY, W, lr, compute);
      return kNone;
    };
  });
}

}  // namespace pkb
