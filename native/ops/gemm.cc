#include "peftkit/ops/gemm.h"

#include "../cpu/gemm.h"
#include "peftkit/kernels.h"

namespace pk::ops {

namespace {
void expect_float(const Tensor& t, const char* what) {
  if (t.dtype != DType::F32 && t.dtype != DType::BF16)
    fail("E_DTYPE", std::string(what) + ": expected dtype f32 or bf16, got " + t.describe());
}

// Checks op(A)·op(B) against C and returns its K.
int64_t check_product(const Tensor& C, const Tensor& A, const Tensor& B, bool transA, bool transB,
                      const std::string& who) {
  expect_ndim(A, 2, (who + " A").c_str());
  expect_ndim(B, 2, (who + " B").c_str());
  expect_float(A, (who + " A").c_str());
  expect_float(B, (who + " B").c_str());
  expect_same_device(C, A, "gemm C", (who + " A").c_str());
  expect_same_device(C, B, "gemm C", (who + " B").c_str());
  const int64_t M = transA ? A.dim(1) : A.dim(0), K = transA ? A.dim(0) : A.dim(1);
  const int64_t Kb = transB ? B.dim(1) : B.dim(0), N = transB ? B.dim(0) : B.dim(1);
  if (K != Kb)
    fail("E_SHAPE", who + ": inner dimensions differ: op(A) is [" + std::to_string(M) + ", " + std::to_string(K) +
                        "] but op(B) is [" + std::to_string(Kb) + ", " + std::to_string(N) + "]");
  expect_shape(C, {M, N}, "gemm C");
  return K;
}

MatRef matref(const Tensor& t, bool trans) { return MatRef{t.raw(), t.dtype, t.dim(1), trans}; }
}  // namespace

void gemm(const Tensor& C, const Tensor& A, const Tensor& B, bool transA, bool transB, float alpha, float beta,
          Compute compute) {
  expect_ndim(C, 2, "gemm C");
  expect_float(C, "gemm C");
  const int64_t K = check_product(C, A, B, transA, transB, "gemm");
  const int64_t M = C.dim(0), N = C.dim(1);
  const MatRef a = with_compute(matref(A, transA), compute), b = with_compute(matref(B, transB), compute);
  if (C.device == Device::CPU) {
    cpu::gemm(M, N, K, alpha, a, b, beta, C.raw(), C.dtype, N);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::gemm(M, N, K, alpha, a, b, beta, C.raw(), C.dtype, N);
#endif
}

void gemm_sum(const Tensor& C, const std::vector<GemmSumTerm>& terms, float beta) {
  expect_ndim(C, 2, "gemm_sum C");
  expect_float(C, "gemm_sum C");
  if (terms.empty()) fail("E_ARG", "gemm_sum terms: expected at least one term");
  const int64_t M = C.dim(0), N = C.dim(1);
  std::vector<cpu::GemmTerm> ks;
  for (size_t t = 0; t < terms.size(); t++) {
    const GemmSumTerm& g = terms[t];
    const int64_t K = check_product(C, g.A, g.B, g.transA, g.transB, "gemm_sum term " + std::to_string(t));
    ks.push_back(cpu::GemmTerm{matref(g.A, g.transA), matref(g.B, g.transB), K, g.alpha});
  }
  if (C.device == Device::CPU) {
    cpu::gemm_sum(M, N, ks.data(), int(ks.size()), beta, C.raw(), C.dtype, N);
    return;
  }
#ifdef PEFTKIT_CUDA
  for (size_t t = 0; t < ks.size(); t++)
    cuda::gemm(M, N, ks[t].K, ks[t].alpha, ks[t].A, ks[t].B, t == 0 ? beta : 1.f, C.raw(), C.dtype, N);
#endif
}

}  // namespace pk::ops
