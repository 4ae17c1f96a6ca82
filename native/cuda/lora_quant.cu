// QLoRA's LoRA on the GPU: the base product through gemm_quant (W decoded a chunk of rows at a
// time, never whole), then the same low-rank half as the f32 LoRA (lora.cuh). bf16 compute
// rounds X / dY and the decoded W in the base product only.
#include "common.cuh"
#include "gemm.cuh"
#include "lora.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
QuantWeight decoded_in(QuantWeight W, Compute compute) {
  W.round_bf16 = compute == Compute::BF16;
  return W;
}
}  // namespace

void lora_forward_quant(float* Y, float* XA, const float* X, const float* Xa, QuantWeight W, const float* A,
                        const float* B, const float* bias, float s, int64_t M, int64_t N, int64_t K, int64_t r,
                        Compute compute) {
  gemm_quant(M, N, K, 1.f, with_compute(operand(X, K), compute), decoded_in(W, compute), true, 0.f, Y, N);
  lora_forward_lowrank(Y, XA, Xa, A, B, bias, s, M, N, K, r);
}

void lora_backward_quant(float* dX, float* dXa, float* dA, float* dB, const float* dY, const float* Xa,
                         const float* XA, QuantWeight W, const float* A, const float* B, float s, int64_t M,
                         int64_t N, int64_t K, int64_t r, float* scratch, Compute compute) {
  if (dX) gemm_quant(M, K, N, 1.f, with_compute(operand(dY, N), compute), decoded_in(W, compute), false, 0.f, dX, K);
  lora_backward_lowrank(dX, dXa, dA, dB, dY, Xa, XA, A, B, s, M, N, K, r, scratch);
}

}  // namespace pk::cuda
