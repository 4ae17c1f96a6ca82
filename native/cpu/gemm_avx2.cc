// AVX2+FMA GEMM micro-kernels: a 6×16 f32 tile in 12 ymm accumulators (2 B vectors and one
// broadcast make 15 of the 16 registers), and a 6×8 tile for narrow last panels.
// Compiled with AVX2 flags: everything but the entry function stays in the anonymous namespace,
// and only gemm.cc calls it, after checking the CPU.
#include <immintrin.h>

#include "gemm_kernels.h"

namespace pk::cpu {

namespace {

constexpr int MR = 6, NR = 16, VW = 8;

// ROW_CONTIG: A(i, k) = a[i + k·a_ks] (packed panels, and Aᵀ stored row-major read in place).
template <int NV, bool ROW_CONTIG>
void f32_tile(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, float* c, int64_t ldc,
              float alpha, float beta) {
  __m256 acc[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) acc[i][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) bv[v] = _mm256_loadu_ps(b + v * VW);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
      const __m256 ai = _mm256_broadcast_ss(ROW_CONTIG ? a + i : a + i * a_rs);
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += a_ks;
    b += NV * VW;
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
      float* ci = c + i * ldc + v * VW;
      __m256 r = _mm256_mul_ps(acc[i][v], va);
      if (beta != 0.f) r = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), r);
      _mm256_storeu_ps(ci, r);
    }
}

void f32_kernel(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int w, float* c,
                int64_t ldc, float alpha, float beta) {
  if (a_rs == 1) {
    if (w == NR) f32_tile<2, true>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
    else f32_tile<1, true>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
  } else {
    if (w == NR) f32_tile<2, false>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
    else f32_tile<1, false>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
  }
}

}  // namespace

GemmArch gemm_arch_avx2() {
  // kc 256: a 6×256 A panel is 6 KiB of L1d; nc 2048: the B block streams from L3.
  return GemmArch{"avx2", MR, NR, VW, 256, 2048, f32_kernel, nullptr, 0, 0, {}};
}

}  // namespace pk::cpu
