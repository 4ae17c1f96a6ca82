// AVX-512 packers for the transposing layouts, X(k, x) = src[x·ld + k]: the A side of X·Wᵀ and
// dY·W, and the B side of X·Wᵀ (W stored [out, in]). 16 rows of 16 k are loaded, transposed in
// registers (64 shuffles per 256 elements) and stored as 16 panel rows, instead of 256 scalar
// strided stores. bf16 pairs are 32-bit units, so they go through the same transposition.
// Compiled with AVX-512 flags: everything but the entry function stays in the anonymous namespace.
// GCC 12 warns (-Wmaybe-uninitialized) inside its own AVX-512 headers, whose masked-op
// wrappers start from a deliberately undefined vector; the warning says nothing about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "gemm_kernels.h"

namespace pk::cpu {

namespace {

#include "transpose16_avx512.h"

inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
inline __mmask32 mask32(int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1); }
inline __mmask16 mask16_from(int64_t n) { return n <= 0 ? __mmask16(0) : mask16(n); }

// dst[k·width + x] (32-bit units) = LOAD(x, k0) lane k - k0, 16 x by 16 k at a time; LOAD(x, k0)
// returns the 16 values of source row x from k0 (zero past the end), rows past nx are zero.
// `step` is how many source elements one 32-bit unit spans along k (1 for f32, 2 for pairs).
template <typename Load>
__attribute__((always_inline)) inline void pack_transposed(float* dst, int64_t width, int64_t units, int64_t nx,
                                                           Load load) {
  for (int64_t x0 = 0; x0 < width; x0 += 16) {
    const int64_t xn = width - x0 < 16 ? width - x0 : 16;  // panel columns in this group
    const int64_t xv = nx - x0 < 0 ? 0 : nx - x0 < xn ? nx - x0 : xn;  // of which hold data
    const __mmask16 store = mask16(xn);
    for (int64_t u0 = 0; u0 < units; u0 += 16) {
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++) r[i] = i < xv ? load(x0 + i, u0) : _mm512_setzero_ps();
      transpose16(r);
      const int64_t un = units - u0 < 16 ? units - u0 : 16;
      for (int64_t j = 0; j < un; j++) _mm512_mask_storeu_ps(dst + (u0 + j) * width + x0, store, r[j]);
    }
  }
}

void f32_cols(float* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  pack_transposed(dst, width, kc, nx, [&](int64_t x, int64_t k0) {
    return _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(mask16(kc - k0), src + x * ld + k0));
  });
}

void bf16_cols(float* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  pack_transposed(dst, width, kc, nx, [&](int64_t x, int64_t k0) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask16(kc - k0), src + x * ld + k0);
    return _mm512_mul_ps(vs, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  });
}

void bf16_pair_cols(bf16* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx) {
  const int64_t pairs = (kc + 1) / 2;
  pack_transposed(reinterpret_cast<float*>(dst), width, pairs, nx, [&](int64_t x, int64_t p0) {
    // 16 pairs are 32 bf16; an odd kc leaves the last pair's second half zero.
    return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask32(kc - 2 * p0), src + x * ld + 2 * p0));
  });
}

// X(k, x) = src[k·ld + x] (B of dY·W, W stored [out, in]; A and B of dYᵀ·X): a scaled copy of
// each k's run of x, 16 at a time, zero past nx. A panel reads a short run (mr or nr values) from
// each of kc rows ld apart, a new page every row, which no hardware prefetcher follows: the rows
// kRowsAhead ahead are prefetched (dYᵀ·X f32 on a 2 MiB-L2 Xeon, one thread, by CPU time:
// 5632×2048×1024 55% → 60% of the FMA peak, 1536×576×1024 57% → 65%; 8 rows ahead gave 59% and
// 61%, 32 the same as 16).
constexpr int64_t kRowsAhead = 16;
template <typename T, typename Load>
__attribute__((always_inline)) inline void pack_rows(float* dst, int64_t width, const T* src, int64_t ld, int64_t kc,
                                                     int64_t nx, Load load) {
  const int64_t bytes = nx * int64_t(sizeof(T));
  for (int64_t k = 0; k < kc; k++) {
    if (k + kRowsAhead < kc) {
      const char* ahead = reinterpret_cast<const char*>(src + (k + kRowsAhead) * ld);
      for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
      _mm_prefetch(ahead + bytes - 1, _MM_HINT_T0);
    }
    for (int64_t x = 0; x < width; x += 16)
      _mm512_mask_storeu_ps(dst + k * width + x, mask16(width - x), load(k, x, mask16_from(nx - x)));
  }
}

void f32_rows(float* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  pack_rows(dst, width, src, ld, kc, nx, [&](int64_t k, int64_t x, __mmask16 m) {
    return _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m, src + k * ld + x));
  });
}

void bf16_rows(float* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  pack_rows(dst, width, src, ld, kc, nx, [&](int64_t k, int64_t x, __mmask16 m) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, src + k * ld + x);
    return _mm512_mul_ps(vs, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  });
}

// bf16 compute: f32 rounded to bf16 (VCVTNE2PS2BF16, round to nearest even) as it is packed.
// Only called where the bf16 kernel runs, so the CPU has AVX512-BF16.

void f32_pair_cols(bf16* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx) {
  const int64_t pairs = (kc + 1) / 2;
  pack_transposed(reinterpret_cast<float*>(dst), width, pairs, nx, [&](int64_t x, int64_t p0) {
    // 16 pairs are 32 floats; past kc they load as zero (an odd kc's last pair ends in a zero).
    const float* s = src + x * ld + 2 * p0;
    const int64_t left = kc - 2 * p0;
    const __m512 lo = _mm512_maskz_loadu_ps(mask16_from(left), s);
    const __m512 hi = _mm512_maskz_loadu_ps(mask16_from(left - 16), s + 16);
    return _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  });
}

// X(k, x) = src[k·ld + x]: rows 2p and 2p + 1 are read 16 x at a time as bf16 (ROW(k, x, mask))
// and interleaved into 32-bit pairs (row 2p in the low half); an odd kc's last pair ends in zero.
template <typename Row>
__attribute__((always_inline)) inline void pack_pair_rows(bf16* dst, int64_t width, int64_t kc, int64_t nx, Row row) {
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t p = 0; p < pairs; p++) {
    const bool second = 2 * p + 1 < kc;
    int32_t* d = reinterpret_cast<int32_t*>(dst) + p * width;
    for (int64_t x = 0; x < width; x += 16) {
      const __mmask16 load = mask16_from(nx - x);
      const __m256i e0 = row(2 * p, x, load), e1 = second ? row(2 * p + 1, x, load) : _mm256_setzero_si256();
      const __m512i pair =
          _mm512_or_si512(_mm512_cvtepu16_epi32(e0), _mm512_slli_epi32(_mm512_cvtepu16_epi32(e1), 16));
      _mm512_mask_storeu_epi32(d + x, mask16(width - x), pair);
    }
  }
}

// f32 rows, rounded (VCVTNEPS2BF16).
void f32_pair_rows(bf16* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx) {
  pack_pair_rows(dst, width, kc, nx, [&](int64_t k, int64_t x, __mmask16 load) {
    return (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(load, src + k * ld + x));
  });
}

// Stored bf16 rows (dY·W with a bf16 W).
void bf16_pair_rows(bf16* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx) {
  pack_pair_rows(dst, width, kc, nx,
                 [&](int64_t k, int64_t x, __mmask16 load) { return _mm256_maskz_loadu_epi16(load, src + k * ld + x); });
}

}  // namespace

GemmPackers gemm_packers_avx512() {
  return GemmPackers{f32_cols, bf16_cols, bf16_pair_cols, f32_pair_cols, f32_pair_rows, bf16_pair_rows, f32_rows, bf16_rows};
}

}  // namespace pk::cpu
