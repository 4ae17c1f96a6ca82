#include "peftkit/ops/gemm_quant.h"

#include "peftkit/kernels.h"

namespace pk::ops {

namespace {

void expect_numel(const Tensor& t, int64_t n, const char* what, const char* why) {
  if (t.numel() != n)
    fail("E_SHAPE", std::string(what) + ": expected " + std::to_string(n) + " elements (" + why + "), got " +
                        t.describe());
}

}  // namespace

void check_quant_weight(const QuantWeightTensors& W) {
  if (W.rows < 1 || W.cols < 1)
    fail("E_SHAPE", "W shape: expected [rows, cols] of at least 1, got [" + std::to_string(W.rows) + ", " +
                        std::to_string(W.cols) + "]");
  const int64_t n = W.rows * W.cols;
  if (W.format == QuantFormat::INT8) {
    expect_dtype(W.codes, DType::I8, "W cb");
    expect_dtype(W.scales, DType::F32, "W scb");
    expect_numel(W.codes, n, "W cb", "rows·cols codes");
    expect_numel(W.scales, W.rows, "W scb", "one per row");
  } else {
    if (W.blocksize < 32 || W.blocksize > 4096 || (W.blocksize & (W.blocksize - 1)) != 0)
      fail("E_ARG", "W blocksize must be a power of two from 32 to 4096, got " + std::to_string(W.blocksize));
    expect_dtype(W.codes, DType::U8, "W packed");
    expect_dtype(W.scales, DType::F32, "W absmax");
    expect_numel(W.codes, (n + 1) / 2, "W packed", "two 4-bit codes a byte");
    expect_numel(W.scales, (n + W.blocksize - 1) / W.blocksize, "W absmax", "one per block");
  }
  expect_same_device(W.codes, W.scales, "W codes", "W scales");
}

void gemm_quant(const Tensor& C, const Tensor& X, const QuantWeightTensors& W, bool transW, float alpha, float beta,
                Compute compute) {
  expect_ndim(C, 2, "gemmQuant C");
  expect_ndim(X, 2, "gemmQuant X");
  expect_dtype(C, DType::F32, "gemmQuant C");
  if (X.dtype != DType::F32 && X.dtype != DType::BF16)
    fail("E_DTYPE", "gemmQuant X: expected dtype f32 or bf16, got " + X.describe());
  check_quant_weight(W);
  expect_same_device(C, X, "gemmQuant C", "gemmQuant X");
  expect_same_device(C, W.codes, "gemmQuant C", "W codes");
  expect_same_device(C, W.scales, "gemmQuant C", "W scales");
  const int64_t K = transW ? W.cols : W.rows, N = transW ? W.rows : W.cols, M = X.dim(0);
  if (X.dim(1) != K)
    fail("E_SHAPE", "gemmQuant X: expected " + std::to_string(K) + " columns (op(W) is [" + std::to_string(K) + ", " +
                        std::to_string(N) + "]), got " + X.describe());
  expect_shape(C, {M, N}, "gemmQuant C");
  const MatRef A = with_compute(MatRef{X.raw(), X.dtype, K, false}, compute);
  const QuantWeight q{W.format, W.codes.raw(), W.scales.data<float>(), W.blocksize, W.rows, W.cols,
                      compute == Compute::BF16};
  if (C.device == Device::CPU) return cpu::gemm_quant(M, N, K, alpha, A, q, transW, beta, C.data<float>(), N);
#ifdef PEFTKIT_CUDA
  cuda::gemm_quant(M, N, K, alpha, A, q, transW, beta, C.data<float>(), N);
#endif
}

}  // namespace pk::ops
