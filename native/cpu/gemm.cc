// Portable GEMM: the reference path every SIMD version must agree with, and the fallback
// on CPUs without AVX2/AVX-512.
#include <cmath>
#include <vector>

#include "gemm.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {
inline float load(const MatRef& m, int64_t i, int64_t j) {
  const int64_t idx = m.trans ? j * m.ld + i : i * m.ld + j;
  return m.dtype == DType::F32 ? static_cast<const float*>(m.data)[idx]
                               : bf16_to_f32(static_cast<const bf16*>(m.data)[idx]);
}
}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, void* C, DType cdtype,
          int64_t ldc) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < M; i++) {
    std::vector<float> acc(size_t(N), 0.f);
    for (int64_t k = 0; k < K; k++) {
      const float a = load(A, i, k);
      for (int64_t j = 0; j < N; j++) acc[size_t(j)] += a * load(B, k, j);
    }
    for (int64_t j = 0; j < N; j++) {
      float v = alpha * acc[size_t(j)];
      if (cdtype == DType::F32) {
        float* c = static_cast<float*>(C) + i * ldc + j;
        *c = beta == 0.f ? v : v + beta * *c;
      } else {
        bf16* c = static_cast<bf16*>(C) + i * ldc + j;
        *c = f32_to_bf16(beta == 0.f ? v : v + beta * bf16_to_f32(*c));
      }
    }
  }
}

// Reference composition; the SIMD path fuses the terms into one pass.
void gemm_sum(int64_t M, int64_t N, const GemmTerm* terms, int nterms, float beta, void* C, DType cdtype,
              int64_t ldc) {
  for (int t = 0; t < nterms; t++)
    gemm(M, N, terms[t].K, terms[t].alpha, terms[t].A, terms[t].B, t == 0 ? beta : 1.f, C, cdtype, ldc);
}

}  // namespace pk::cpu
