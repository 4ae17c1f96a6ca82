#pragma once
#include "../tensor.h"
#include "gemm_quant.h"

namespace pk::ops {

// LLM.int8 activations (bitsandbytes' int8_vectorwise_quant; exact rule in kernels.inc): X f32
// [M, K] -> CA i8 [M, K], SCA f32 [M], outlierCols u8 [K] (1 for an outlier column). threshold is
// a finite number >= 0; 0 quantizes every column.
void quantize_int8_vectorwise(const Tensor& CA, const Tensor& SCA, const Tensor& outlier_cols, const Tensor& X,
                              float threshold);

// Y = LLM.int8(X, W) (+ bias) (+ s·(Xa·Aᵀ)·Bᵀ): bitsandbytes' MatMul8bitLt forward with the
// outlier decomposition at `threshold`, W [N, K] an int8 weight (CB, SCB). X [..., K] (leading
// dims flattened into M rows), Y [..., N], bias [N] or empty. With a LoRA term, A [r, K], B [N, r],
// and XA [..., r] receives Xa·Aᵀ (Xa: dropout(X), or empty for X); without, A, B, XA and Xa are
// empty. The backward is lora_backward_quant / gemm_quant on the same W (dequantized).
void llm_int8_forward(const Tensor& Y, const Tensor& XA, const Tensor& X, const Tensor& Xa,
                      const QuantWeightTensors& W, float threshold, const Tensor& A, const Tensor& B,
                      const Tensor& bias, float s);

}  // namespace pk::ops
