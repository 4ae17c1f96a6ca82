#include "common.h"
#include "peftkit/ops/lora.h"

namespace pkb {

void InitLoraQuant(Napi::Env env, Napi::Object exports) {
  // loraForwardQuant(Y, XA, X, Xa | null, format, codes, scales, blocksize, rows, cols, A, B, bias | null, scale,
  //                  compute)
  DefineOp(env, exports, "loraForwardQuant", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor Y = GetTensor(info, 0, "Y"), XA = GetTensor(info, 1, "XA"), X = GetTensor(info, 2, "X");
    pk::Tensor Xa = GetOptionalTensor(info, 3, "dropoutInput");
    pk::ops::QuantWeightTensors W = GetQuantWeight(info, 4);
    pk::Tensor A = GetTensor(info, 10, "A"), B = GetTensor(info, 11, "B");
    pk::Tensor bias = GetOptionalTensor(info, 12, "bias");
    float s = float(GetNumber(info, 13, "scale"));
    pk::Compute compute = GetCompute(info, 14);
    return [=]() {
      pk::ops::lora_forward_quant(Y, XA, X, Xa, W, A, B, bias, s, compute);
      return kNone;
    };
  });
  // loraBackwardQuant(dX | null, dXa | null, dA, dB, dY, Xa, XA, format, codes, scales, blocksize, rows, cols, A, B,
  //                   scale, compute)
  DefineOp(env, exports, "loraBackwardQuant", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor dX = GetOptionalTensor(info, 0, "dX"), dXa = GetOptionalTensor(info, 1, "dDropoutInput");
    pk::Tensor dA = GetTensor(info, 2, "dA"), dB = GetTensor(info, 3, "dB"), dY = GetTensor(info, 4, "dY");
    pk::Tensor Xa = GetTensor(info, 5, "Xa"), XA = GetTensor(info, 6, "XA");
    pk::ops::QuantWeightTensors W = GetQuantWeight(info, 7);
    pk::Tensor A = GetTensor(info, 13, "A"), B = GetTensor(info, 14, "B");
    float s = float(GetNumber(info, 15, "scale"));
    pk::Compute compute = GetCompute(info, 16);
    return [=]() {
      pk::ops::lora_backward_quant(dX, dXa, dA, dB, dY, Xa, XA, W, A, B, s, compute);
      return kNone;
    };
  });
}

}  // namespace pkb
