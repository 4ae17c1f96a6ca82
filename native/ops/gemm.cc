#include "peftkit/ops/gemm.h"

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {
void expect_float(const Tensor& t, const char* what) {
  if (t.dtype != DType::F32 && t.dtype != DType::BF16)
    fail("E_DTYPE", std::string(what) + ": expected dtype f32 or bf16, got " + t.describe());
}
}  // namespace

void gemm(const Tensor& C, const Tensor& A, const Tensor& B, bool transA, bool transB, float alpha, float beta) {
  expect_ndim(A, 2, "gemm A");
  expect_ndim(B, 2, "gemm B");
  expect_ndim(C, 2, "gemm C");
  expect_float(A, "gemm A");
  expect_float(B, "gemm B");
  expect_float(C, "gemm C");
  expect_same_device(C, A, "gemm C", "gemm A");
  expect_same_device(C, B, "gemm C", "gemm B");
  const int64_t M = transA ? A.dim(1) : A.dim(0), K = transA ? A.dim(0) : A.dim(1);
  const int64_t Kb = transB ? B.dim(1) : B.dim(0), N = transB ? B.dim(0) : B.dim(1);
  if (K != Kb)
    fail("E_SHAPE", "gemm: inner dimensions differ: op(A) is [" + std::to_string(M) + ", " + std::to_string(K) +
                        "] but op(B) is [" + std::to_string(Kb) + ", " + std::to_string(N) + "]");
  expect_shape(C, {M, N}, "gemm C");
  MatRef a{A.raw(), A.dtype, A.dim(1), transA}, b{B.raw(), B.dtype, B.dim(1), transB};
  if (C.device == Device::CPU) {
    cpu::gemm(M, N, K, alpha, a, b, beta, C.raw(), C.dtype, N);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::gemm(M, N, K, alpha, a, b, beta, C.raw(), C.dtype, N);
#endif
}

}  // namespace pk::ops
