// AVX-512 GEMM micro-kernels: a 14×32 f32 tile in 28 zmm accumulators (2 B vectors and one
// broadcast make 31 of the 32 registers), a 14×16 tile for narrow last panels (N = 16 is the
// LoRA rank), and the same tiles over bf16 k-pairs with VDPBF16PS.
// Compiled with AVX-512 flags: everything but the entry function stays in the anonymous
// namespace, and only gemm.cc calls it, after checking the CPU.
#include <immintrin.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "gemm_kernels.h"

namespace pk::cpu {

namespace {

constexpr int MR = 14, NR = 32, VW = 16;

template <int NV>
__attribute__((always_inline)) inline void store_tile(__m512 (&acc)[MR][NV], float* c, int64_t ldc, float alpha,
                                                      float beta) {
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
      float* ci = c + i * ldc + v * VW;
      __m512 r = _mm512_mul_ps(acc[i][v], va);
      if (beta != 0.f) r = _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci), r);
      _mm512_storeu_ps(ci, r);
    }
}

// How A is read: from a packed panel (A(i, k) = a[i + k·mr]), or in place for skinny products,
// where a packed panel would be used once: rows in place (A(i, k) = a[i·a_rs + k], X·Aᵀ) or
// columns in place (A(i, k) = a[i + k·a_ks], dYᵀ·(X·Aᵀ)). Columns in place touch a new row of
// memory every step, which the hardware prefetchers do not see coming: they are prefetched
// (+17% at M = 5632, N = 16 on Zen 4; the same for rows in place measured nothing).
enum AMode { kPacked, kRowsInPlace, kColsInPlace };

template <int NV, AMode MODE>
void f32_tile(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, float* c, int64_t ldc,
              float alpha, float beta) {
  __m512 acc[MR][NV];
#pragma GCC unroll 14
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
  // Two k steps per trip: on a 2 MiB-L2 Xeon (two 512-bit FMA ports) the loop of one step ran
  // at 79% of the FMA peak with its B panels in L2, two steps 83–84% (four: no better).
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; k++) {
    if (MODE == kColsInPlace) {
      const float* ahead = a + 8 * a_ks;  // 8 steps ahead; 14 floats may span two lines
      _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ahead + MR - 1), _MM_HINT_T0);
    }
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + v * VW);
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
      const __m512 ai = _mm512_set1_ps(MODE == kRowsInPlace ? a[i * a_rs] : a[i]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += a_ks;
    b += NV * VW;
  }
  store_tile<NV>(acc, c, ldc, alpha, beta);
}

template <AMode MODE>
void f32_width(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int w, float* c,
               int64_t ldc, float alpha, float beta) {
  if (w == NR) f32_tile<2, MODE>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
  else f32_tile<1, MODE>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
}

void f32_kernel(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int w, float* c,
                int64_t ldc, float alpha, float beta) {
  if (a_rs != 1) f32_width<kRowsInPlace>(kc, a, a_rs, a_ks, b, w, c, ldc, alpha, beta);
  else if (a_ks == MR) f32_width<kPacked>(kc, a, a_rs, a_ks, b, w, c, ldc, alpha, beta);
  else f32_width<kColsInPlace>(kc, a, a_rs, a_ks, b, w, c, ldc, alpha, beta);
}

template <int NV>
void bf16_tile(int64_t kc, const bf16* a, const bf16* b, float* c, int64_t ldc, float alpha, float beta) {
  __m512 acc[MR][NV];
#pragma GCC unroll 14
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t p = 0; p < pairs; p++) {
    __m512bh bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) bv[v] = (__m512bh)_mm512_loadu_si512(b + v * 2 * VW);
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
      int32_t pair;
      std::memcpy(&pair, a + 2 * i, 4);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
    }
    a += 2 * MR;
    b += 2 * NV * VW;
  }
  store_tile<NV>(acc, c, ldc, alpha, beta);
}

void bf16_kernel(int64_t kc, const bf16* a, const bf16* b, int w, float* c, int64_t ldc, float alpha, float beta) {
  if (w == NR) bf16_tile<2>(kc, a, b, c, ldc, alpha, beta);
  else bf16_tile<1>(kc, a, b, c, ldc, alpha, beta);
}

}  // namespace

GemmArch gemm_arch_avx512() {
  // Measured on Zen 4 (32 KiB L1d, 1 MiB L2, 32 MiB L3), one thread, by CPU time:
  // kc 512 (a 28 KiB A micro-panel, half of it in L1 at a time, the rest from L2) beats kc 256
  // by ~6%: C tiles are read and written half as often. nc 2048: the B block (4 MiB f32,
  // 2 MiB bf16) streams from L3 at ~4 bytes per cycle, well within its bandwidth, and A is
  // packed 4× less often than with an L2-sized block (~8% at N = 5632).
  GemmArch a{"avx512", MR, NR, VW, 512, 2048, f32_kernel, bf16_kernel, 512, 2048, {}};
  // Where the L2 holds 2 MiB or more (Intel Xeons since Sapphire Rapids), the f32 B block is
  // sized to half of it instead: the 14×32 tile reads 128 bytes of B per 28 FMAs, ~9 bytes a
  // cycle, more than those Xeons' L3 gives one core. Measured on a 2 MiB-L2 Xeon (avx512 +
  // amx-bf16), one thread, by CPU time, f32: X·Wᵀ 1024×5632×2048 58% → 69% of the FMA peak,
  // 1024×49152×576 (the LM head) 61% → 71%, 1024×1536×576 65% → 73%; kc 384 nc 768 against
  // kc 512 nc 512 / 384 640 / 256 1024, within 2% of the best of them on every shape.
#ifdef _SC_LEVEL2_CACHE_SIZE  // glibc's
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#else
  const long l2 = 0;
#endif
  if (l2 >= (2l << 20)) {
    a.kc = 384;
    a.nc = std::max<int64_t>(NR, (l2 / 2 / (a.kc * 4)) / NR * NR);
  }
  return a;
}

}  // namespace pk::cpu
