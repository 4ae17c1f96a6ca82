#include <vector>

#include "common.h"
#include "peftkit/ops/gemm.h"

namespace pkb {

void InitGemm(Napi::Env env, Napi::Object exports) {
  // gemm(C, A, B, transA, transB, alpha, beta, compute)
  DefineOp(env, exports, "gemm", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor C = GetTensor(info, 0, "C"), A = GetTensor(info, 1, "A"), B = GetTensor(info, 2, "B");
    bool ta = GetBool(info, 3, "transA"), tb = GetBool(info, 4, "transB");
    float alpha = float(GetNumber(info, 5, "alpha")), beta = float(GetNumber(info, 6, "beta"));
    pk::Compute compute = GetCompute(info, 7);
    return [=]() {
      pk::ops::gemm(C, A, B, ta, tb, alpha, beta, compute);
      return kNone;
    };
  });
  // gemmSum(C, beta, A0, B0, transA0, transB0, alpha0, A1, B1, ...): five arguments per term.
  DefineOp(env, exports, "gemmSum", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor C = GetTensor(info, 0, "C");
    float beta = float(GetNumber(info, 1, "beta"));
    if (info.Length() < 7 || (info.Length() - 2) % 5 != 0)
      pk::fail("E_ARG", "gemmSum: expected C, beta, then (A, B, transA, transB, alpha) per term");
    std::vector<pk::ops::GemmSumTerm> terms;
    for (size_t i = 2; i < info.Length(); i += 5)
      terms.push_back({GetTensor(info, i, "term A"), GetTensor(info, i + 1, "term B"), GetBool(info, i + 2, "term transA"),
                       GetBool(info, i + 3, "term transB"), float(GetNumber(info, i + 4, "term alpha"))});
    return [=]() {
      pk::ops::gemm_sum(C, terms, beta);
      return kNone;
    };
  });
}

}  // namespace pkb
