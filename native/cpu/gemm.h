// CPU-internal GEMM entry points beyond the op table, for kernels that build on GEMM
// (fused LoRA, the fused LM-head loss). Not part of the public engine API.
#pragma once
#include "peftkit/kernels.h"

namespace pk::cpu {

// One product of a sum: alpha·op(A)[M,K]·op(B)[K,N].
struct GemmTerm {
  MatRef A, B;
  int64_t K;
  float alpha;
};

// C[M,N] = Σ_t alpha_t·op(A_t)·op(B_t) + beta·C in ONE pass over C: the K ranges of the terms
// are concatenated inside the packed panels (the "extend K by r" fusion of LoRA), so C is
// written once and no concatenated operand is ever materialized.
void gemm_sum(int64_t M, int64_t N, const GemmTerm* terms, int nterms, float beta, void* C, DType cdtype,
              int64_t ldc);

}  // namespace pk::cpu
