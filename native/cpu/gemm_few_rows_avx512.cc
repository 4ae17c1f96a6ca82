// AVX-512 few-rows products (GemmFewRows, gemm_kernels.h): a decode step of a batch of up to 16
// rows against a weight read in place. Four W rows at a time are streamed once from memory and
// met by every x row (kept in L1: 16 × K floats), 4 × 4 accumulators per block of 4 x rows.
// Compiled with AVX-512 flags: everything but the entry function stays in the anonymous
// namespace, and only gemm.cc calls it, after checking the CPU.
// GCC 12 flags the undefined pass-through operand inside its own widening and reduction
// intrinsics (GCC bug 105593, fixed in its headers later).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "gemm_kernels.h"

namespace pk::cpu {

namespace {

__attribute__((always_inline)) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((always_inline)) inline __m512 load16(const bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
__attribute__((always_inline)) inline __m512 load16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
__attribute__((always_inline)) inline __m512 load16(const bf16* p, __mmask16 k) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// y[c][i·ldy] += x_i·w[c] for i < M, c < 4 (a null y[c]: w[c] repeats another row, not stored).
// The next four W rows are prefetched as these are read: eight streams in flight a thread, where
// the hardware prefetcher alone left a 113 MB LM head at 9.6 GB/s on two Xeon cores.
template <int M, typename T>
void block(int64_t K, const float* x, int64_t ldx, const T* const (&w)[4], const T* next, int nnext, int64_t ldw,
           float* const (&y)[4], int64_t ldy) {
  __m512 acc[M][4];
#pragma GCC unroll 4
  for (int i = 0; i < M; i++)
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) acc[i][c] = _mm512_setzero_ps();
  constexpr int64_t kLine = 64 / int64_t(sizeof(T));
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (k % kLine == 0)
      for (int c = 0; c < nnext; c++) _mm_prefetch(reinterpret_cast<const char*>(next + c * ldw + k), _MM_HINT_T0);
    __m512 v[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) v[c] = load16(w[c] + k);
#pragma GCC unroll 4
    for (int i = 0; i < M; i++) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 4
      for (int c = 0; c < 4; c++) acc[i][c] = _mm512_fmadd_ps(xv, v[c], acc[i][c]);
    }
  }
  if (k < K) {
    const __mmask16 km = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 v[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) v[c] = load16(w[c] + k, km);
#pragma GCC unroll 4
    for (int i = 0; i < M; i++) {
      const __m512 xv = _mm512_maskz_loadu_ps(km, x + i * ldx + k);
#pragma GCC unroll 4
      for (int c = 0; c < 4; c++) acc[i][c] = _mm512_fmadd_ps(xv, v[c], acc[i][c]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < M; i++)
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++)
      if (y[c]) y[c][i * ldy] += _mm512_reduce_add_ps(acc[i][c]);
}

template <typename T>
void few_rows(int m, int64_t n, int64_t K, const float* x, int64_t ldx, const T* w, int64_t ldw, float* y,
              int64_t ldy) {
  for (int64_t j = 0; j < n; j += 4) {
    const T* wj[4];
    for (int c = 0; c < 4; c++) wj[c] = w + (j + c < n ? j + c : j) * ldw;
    const T* next = w + (j + 4) * ldw;
    const int nnext = int(n - (j + 4) < 4 ? (n - (j + 4) > 0 ? n - (j + 4) : 0) : 4);
    // Four x rows at a time against the four W rows, which stay in L1 for the next four.
    for (int i0 = 0; i0 < m; i0 += 4) {
      float* yj[4];
      for (int c = 0; c < 4; c++) yj[c] = j + c < n ? y + i0 * ldy + j + c : nullptr;
      const float* xi = x + i0 * ldx;
      const int pf = i0 == 0 ? nnext : 0;  // the next rows are asked for once
      switch (m - i0) {
        case 1: block<1>(K, xi, ldx, wj, next, pf, ldw, yj, ldy); break;
        case 2: block<2>(K, xi, ldx, wj, next, pf, ldw, yj, ldy); break;
        case 3: block<3>(K, xi, ldx, wj, next, pf, ldw, yj, ldy); break;
        default: block<4>(K, xi, ldx, wj, next, pf, ldw, yj, ldy); break;
      }
    }
  }
}

}  // namespace

GemmFewRows gemm_few_rows_avx512() { return {few_rows<float>, few_rows<bf16>}; }

}  // namespace pk::cpu
