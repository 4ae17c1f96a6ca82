#pragma once
#include "../tensor.h"
#include "gemm_quant.h"

namespace pk::ops {

// Fused low-rank matmul (LoRA): Y = X·Wᵀ + s·(Xa·Aᵀ)·Bᵀ (+ bias), W + s·B·A never formed.
// X [..., K] (leading dims flattened into M rows); W [N, K] f32 or bf16 (frozen base); A [r, K];
// B [N, r]; bias [N] or empty; Xa, the low-rank path's input, is dropout(X) or empty for X.
// Writes Y [..., N] and XA [..., r] = Xa·Aᵀ (saved for lora_backward). Everything but W is f32.
// compute BF16: X·Wᵀ reads X and W rounded to bf16 (f32 sums); the rank-r products stay f32.
void lora_forward(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa, const Tensor& W,
                  const Tensor& A, const Tensor& B, const Tensor& bias, float s, Compute compute);

// Gradients of lora_forward for dY [..., N]. Xa is the low-rank input the forward used (X when
// there was no dropout). dX [..., K] (or empty) is overwritten with dY·W, plus s·(dY·B)·A when dXa
// is empty; with dropout, dXa [..., K] receives s·(dY·B)·A instead. dA += s·(dY·B)ᵀ·Xa and
// dB += s·dYᵀ·XA accumulate. The [M, r] scratch is allocated here on the tensors' device.
// compute BF16: dY·W reads dY and W rounded to bf16; the rank-r products stay f32.
void lora_backward(const Tensor& dX, const Tensor& dXa, const Tensor& dA, const Tensor& dB, const Tensor& dY,
                   const Tensor& Xa, const Tensor& XA, const Tensor& W, const Tensor& A, const Tensor& B, float s,
                   Compute compute);

// QLoRA: lora_forward / lora_backward with the frozen W [N, K] quantized (rows N, cols K); equal
// to them on the dequantized W (compute BF16: on the dequantized W rounded to bf16).
void lora_forward_quant(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa,
                        const QuantWeightTensors& W, const Tensor& A, const Tensor& B, const Tensor& bias, float s,
                        Compute compute);
void lora_backward_quant(const Tensor& dX, const Tensor& dXa, const Tensor& dA, const Tensor& dB, const Tensor& dY,
                         const Tensor& Xa, const Tensor& XA, const QuantWeightTensors& W, const Tensor& A,
                         const Tensor& B, float s, Compute compute);

}  // namespace pk::ops
