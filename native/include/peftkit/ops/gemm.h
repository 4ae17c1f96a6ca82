#pragma once
#include "../tensor.h"

namespace pk::ops {

// C = alpha·op(A)·op(B) + beta·C for 2-D tensors. A, B: f32 or bf16; C: f32 or bf16.
void gemm(const Tensor& C, const Tensor& A, const Tensor& B, bool transA, bool transB, float alpha, float beta);

}  // namespace pk::ops
