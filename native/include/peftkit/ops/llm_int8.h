#pragma once
#include "../tensor.h"
#include "gemm_quant.h"

namespace pk::ops {

// LLM.int8 activations (bitsandbytes' int8_vectorwise_quant; exact rule in kernels.inc): X f32
// [M, K] -> CA i8 [M, K], SCA f32 [M], outlierCols u8 [K] (1 for an outlier column). threshold is
// a finite number >= 0; 0 quantizes every column.
void quantize_int8_vectorwise(const Tensor& CA, const Tensor& SCA, const Tensor& outlier_cols, const Tensor& X,
                              float threshold);

// The LLM.int8 matmul itself (bitsandbytes' MatMul8bitLt forward) is the Linear op's on an int8
// weight with a threshold: linear_forward (ops/linear.h).

}  // namespace pk::ops
