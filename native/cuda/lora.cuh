// The low-rank half of LoRA around a base product the caller has computed: lora.cu runs it
// after an f32/bf16 W GEMM, lora_quant.cu after the quantized one. Internal to native/cuda.
// Shapes as kernels.inc's lora_forward / lora_backward.
#pragma once
#include "peftkit/kernels.h"

namespace pk::cuda {

// Y holds X·Wᵀ; then XA = Xa·Aᵀ, Y += s·XA·Bᵀ (+ bias).
void lora_forward_lowrank(float* Y, float* XA, const float* Xa, const float* A, const float* B, const float* bias,
                          float s, int64_t M, int64_t N, int64_t K, int64_t r);
// dX (when non-null) holds dY·W; then scratch = dY·B, the low-rank input gradient goes to dXa
// (dropout: a separate input) or is added into dX, and dA, dB accumulate.
void lora_backward_lowrank(float* dX, float* dXa, float* dA, float* dB, const float* dY, const float* Xa,
                           const float* XA, const float* A, const float* B, float s, int64_t M, int64_t N, int64_t K,
                           int64_t r, float* scratch);

}  // namespace pk::cuda
