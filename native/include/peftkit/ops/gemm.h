#pragma once
#include <vector>

#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// C = alpha·op(A)·op(B) + beta·C for 2-D tensors. A, B: f32 or bf16; C: f32 or bf16.
// compute BF16: f32 operands are read rounded to bf16 (bf16 compute, f32 sums); F32 reads them
// as they are (bf16 operands are exact in f32 either way).
void gemm(const Tensor& C, const Tensor& A, const Tensor& B, bool transA, bool transB, float alpha, float beta,
          Compute compute);

// One product of gemm_sum.
struct GemmSumTerm {
  Tensor A, B;
  bool transA = false, transB = false;
  float alpha = 1.f;
};

// C = Σ_t alpha_t·op(A_t)·op(B_t) + beta·C, every op(A_t)·op(B_t) of C's shape; on the CPU the
// K ranges are concatenated so C is written once (the fused LoRA product).
void gemm_sum(const Tensor& C, const std::vector<GemmSumTerm>& terms, float beta);

}  // namespace pk::ops
