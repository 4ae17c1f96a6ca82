#include "common.h"
#include "peftkit/ops/lora.h"

namespace pkb {

void InitLora(Napi::Env env, Napi::Object exports) {
  // loraForward(Y, XA, X, Xa | null, W, A, B, bias | null, scale, compute)
  DefineOp(env, exports, "loraForward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor Y = GetTensor(info, 0, "Y"), XA = GetTensor(info, 1, "XA"), X = GetTensor(info, 2, "X");
    pk::Tensor Xa = GetOptionalTensor(info, 3, "dropoutInput");
    pk::Tensor W = GetTensor(info, 4, "W"), A = GetTensor(info, 5, "A"), B = GetTensor(info, 6, "B");
    pk::Tensor bias = GetOptionalTensor(info, 7, "bias");
    float s = float(GetNumber(info, 8, "scale"));
    pk::Compute compute = GetCompute(info, 9);
    return [=]() {
      pk::ops::lora_forward(Y, XA, X, Xa, W, A, B, bias, s, compute);
      return kNone;
    };
  });
  // loraBackward(dX | null, dXa | null, dA, dB, dY, Xa, XA, W, A, B, scale, compute)
  DefineOp(env, exports, "loraBackward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor dX = GetOptionalTensor(info, 0, "dX"), dXa = GetOptionalTensor(info, 1, "dDropoutInput");
    pk::Tensor dA = GetTensor(info, 2, "dA"), dB = GetTensor(info, 3, "dB"), dY = GetTensor(info, 4, "dY");
    pk::Tensor Xa = GetTensor(info, 5, "Xa"), XA = GetTensor(info, 6, "XA");
    pk::Tensor W = GetTensor(info, 7, "W"), A = GetTensor(info, 8, "A"), B = GetTensor(info, 9, "B");
    float s = float(GetNumber(info, 10, "scale"));
    pk::Compute compute = GetCompute(info, 11);
    return [=]() {
      pk::ops::lora_backward(dX, dXa, dA, dB, dY, Xa, XA, W, A, B, s, compute);
      return kNone;
    };
  });
}

}  // namespace pkb
