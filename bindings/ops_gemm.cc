#include "common.h"
#include "peftkit/ops/gemm.h"

namespace pkb {

void InitGemm(Napi::Env env, Napi::Object exports) {
  // gemm(C, A, B, transA, transB, alpha, beta)
  DefineOp(env, exports, "gemm", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor C = GetTensor(info, 0, "C"), A = GetTensor(info, 1, "A"), B = GetTensor(info, 2, "B");
    bool ta = GetBool(info, 3, "transA"), tb = GetBool(info, 4, "transB");
    float alpha = float(GetNumber(info, 5, "alpha")), beta = float(GetNumber(info, 6, "beta"));
    return [=]() {
      pk::ops::gemm(C, A, B, ta, tb, alpha, beta);
      return kNone;
    };
  });
}

}  // namespace pkb
