// LoRA on the GPU, composed from the GEMM launcher: the low-rank path costs M·r·(N+K) extra
// multiply-adds next to the base M·N·K, so three GEMMs and an accumulate are close to a fused
// kernel while W + s·B·A is never formed. Shapes: X, Xa [M,K]; W [N,K]; A [r,K]; B [N,r];
// XA [M,r]; Y [M,N]. bf16 compute rounds X, dY and an f32 W in the base GEMM's loads.
#include "common.cuh"
#include "gemm.cuh"
#include "lora.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// One block per row m: Y[m, :] += bias.
__global__ void add_bias_rows(float* Y, const float* bias, int64_t N) {
  float* row = Y + int64_t(blockIdx.x) * N;
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) row[j] += bias[j];
}
}  // namespace

void lora_forward_lowrank(float* Y, float* XA, const float* Xa, const float* A, const float* B, const float* bias,
                          float s, int64_t M, int64_t N, int64_t K, int64_t r) {
  gemm_f32(XA, r, operand(Xa, K), operand(A, K, true), M, r, K, 1.f, false);
  gemm_f32(Y, N, operand(XA, r), operand(B, r, true), M, N, r, s, true);
  if (bias && M * N > 0) {
    add_bias_rows<<<unsigned(M), N >= 256 ? 256u : unsigned((N + 31) / 32 * 32), 0, stream()>>>(Y, bias, N);
    check_launch("lora_forward bias");
  }
}

void lora_forward(float* Y, float* XA, const float* X, const float* Xa, const void* W, DType w_dtype,
                  const float* A, const float* B, const float* bias, float s, int64_t M, int64_t N, int64_t K,
                  int64_t r, Compute compute) {
  // Y = X·Wᵀ; XA = Xa·Aᵀ; Y += s·XA·Bᵀ.
  gemm_f32(Y, N, with_compute(operand(X, K), compute), with_compute(operand(W, w_dtype, K, true), compute), M, N, K,
           1.f, false);
  lora_forward_lowrank(Y, XA, Xa, A, B, bias, s, M, N, K, r);
}

void lora_backward_lowrank(float* dX, float* dXa, float* dA, float* dB, const float* dY, const float* Xa,
                           const float* XA, const float* A, const float* B, float s, int64_t M, int64_t N, int64_t K,
                           int64_t r, float* scratch) {
  // scratch = dY·B [M,r], the gradient of XA without the scale.
  float* dYB = scratch;
  gemm_f32(dYB, r, operand(dY, N), operand(B, r), M, r, N, 1.f, false);
  if (dXa)
    gemm_f32(dXa, K, operand(dYB, r), operand(A, K), M, K, r, s, false);
  else if (dX)
    gemm_f32(dX, K, operand(dYB, r), operand(A, K), M, K, r, s, true);
  if (dA) gemm_f32(dA, K, operand(dYB, r, true), operand(Xa, K), r, K, M, s, true);
  if (dB) gemm_f32(dB, r, operand(dY, N, true), operand(XA, r), N, r, M, s, true);
}

void lora_backward(float* dX, float* dXa, float* dA, float* dB, const float* dY, const float* Xa, const float* XA,
                   const void* W, DType w_dtype, const float* A, const float* B, float s, int64_t M, int64_t N,
                   int64_t K, int64_t r, float* scratch, Compute compute) {
  if (dX)
    gemm_f32(dX, K, with_compute(operand(dY, N), compute), with_compute(operand(W, w_dtype, K), compute), M, K, N,
             1.f, false);
  lora_backward_lowrank(dX, dXa, dA, dB, dY, Xa, XA, A, B, s, M, N, K, r, scratch);
}

}  // namespace pk::cuda
