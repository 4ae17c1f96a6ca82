// The quantized-weight GEMM on the GPU: W is dequantized by the quant.cu kernels into a
// stream-ordered temporary f32 buffer, then the f32 GEMM runs on it. Simple and exact (the same
// dequantized values as the CPU); a fused per-tile dequantization is left for later. bf16
// compute (W.round_bf16) reads the temporary rounded, as any f32 operand marked round_bf16.
#include "common.cuh"
#include "gemm.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

void gemm_quant(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, QuantWeight W, bool w_trans, float beta,
                float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  const int64_t n = W.rows * W.cols;
  if (n == 0) return gemm(M, N, K, alpha, A, operand(static_cast<const float*>(nullptr), 1), beta, C, DType::F32, ldc);
  float* w = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&w), size_t(n) * sizeof(float), stream()), "gemm_quant alloc");
  if (W.format == QuantFormat::INT8)
    dequantize_int8_rowwise(w, DType::F32, static_cast<const int8_t*>(W.codes), W.scales, W.rows, W.cols);
  else
    dequantize_4bit(w, DType::F32, static_cast<const uint8_t*>(W.codes), W.scales, n, W.blocksize,
                    W.format == QuantFormat::FP4 ? Quant4Type::FP4 : Quant4Type::NF4);
  MatRef wt = operand(w, W.cols, w_trans);
  wt.round_bf16 = W.round_bf16;
  gemm(M, N, K, alpha, A, wt, beta, C, DType::F32, ldc);
  check(cudaFreeAsync(w, stream()), "gemm_quant free");
}

}  // namespace pk::cuda
