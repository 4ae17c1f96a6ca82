// AVX2+FMA attention: the tile algorithm of attention_tiles.inc on a register-blocked tile
// product (4 rows × 16 columns = 8 ymm accumulators; a masked last vector handles any width) and
// 8×8 register transposes for packing key tiles.
#include <immintrin.h>
#include <math.h>
#include <omp.h>

#include <cstdint>

#include "attention.h"

namespace pk::cpu {

namespace {

inline __m256 load(const float* p, bool masked, __m256i mask) {
  return masked ? _mm256_maskload_ps(p, mask) : _mm256_loadu_ps(p);
}

inline void store(float* p, __m256 x, bool masked, __m256i mask) {
  if (masked) _mm256_maskstore_ps(p, mask, x);
  else _mm256_storeu_ps(p, x);
}

// C[0:MR, 0:8·NV] (+)= A·B for one register block; with Tail the last vector is masked.
template <int MR, int NV, bool Tail>
inline void micro(float* c, int64_t ldc, const float* a, int64_t sai, int64_t sak, const float* b, int64_t ldb,
                  int64_t k, __m256i mask, bool accumulate) {
  __m256 acc[MR][NV];
#pragma GCC unroll 4
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++)
      acc[i][v] = accumulate ? load(c + i * ldc + 8 * v, Tail && v == NV - 1, mask) : _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    const float* brow = b + kk * ldb;
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) bv[v] = load(brow + 8 * v, Tail && v == NV - 1, mask);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
      const __m256 av = _mm256_broadcast_ss(a + i * sai + kk * sak);
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) store(c + i * ldc + 8 * v, acc[i][v], Tail && v == NV - 1, mask);
}

template <int MR>
inline void micro_cols(int64_t nn, float* c, int64_t ldc, const float* a, int64_t sai, int64_t sak, const float* b,
                       int64_t ldb, int64_t k, bool accumulate) {
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(nn & 7)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  if (nn == 16) return micro<MR, 2, false>(c, ldc, a, sai, sak, b, ldb, k, mask, accumulate);
  if (nn == 8) return micro<MR, 1, false>(c, ldc, a, sai, sak, b, ldb, k, mask, accumulate);
  if (nn > 8) return micro<MR, 2, true>(c, ldc, a, sai, sak, b, ldb, k, mask, accumulate);
  return micro<MR, 1, true>(c, ldc, a, sai, sak, b, ldb, k, mask, accumulate);
}

void tile_gemm(float* c, int64_t ldc, const float* a, int64_t sai, int64_t sak, const float* b, int64_t ldb,
               int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t nn = n - j0 < 16 ? n - j0 : 16;
    int64_t i = 0;
    for (; i + 4 <= m; i += 4)
      micro_cols<4>(nn, c + i * ldc + j0, ldc, a + i * sai, sai, sak, b + j0, ldb, k, accumulate);
    for (; i < m; i++) micro_cols<1>(nn, c + i * ldc + j0, ldc, a + i * sai, sai, sak, b + j0, ldb, k, accumulate);
  }
}

// In place: r[x][t] <- r[t][x]. Pairs, then quads within 128-bit lanes, then lanes.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // s[4h + c], lane L: element 4L + c of rows 4h..4h+3.
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++) {
    s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xee);
    s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; c++) {
    r[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
  }
}

// 8 keys × 8 dims at a time through registers; rows past cols load as zeros.
void pack_transposed(float* dst, const float* rows, int64_t ld, int64_t cols, int64_t D) {
  for (int64_t c0 = 0; c0 < cols; c0 += 8) {
    const int64_t nc = cols - c0 < 8 ? cols - c0 : 8;
    for (int64_t d0 = 0; d0 < D; d0 += 8) {
      const int64_t nd = D - d0 < 8 ? D - d0 : 8;
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(nd)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      __m256 r[8];
#pragma GCC unroll 8
      for (int t = 0; t < 8; t++)
        r[t] = t < nc ? _mm256_maskload_ps(rows + (c0 + t) * ld + d0, m) : _mm256_setzero_ps();
      transpose8(r);
      for (int64_t x = 0; x < nd; x++) _mm256_storeu_ps(dst + (d0 + x) * kAttnTileK + c0, r[x]);
    }
  }
}

#include "attention_tiles.inc"

}  // namespace

void attention_forward_avx2(float* out, float* lse, const float* q, const float* k, const float* v,
                            const AttentionDims& d, float* scratch, int64_t scratch_stride) {
  forward_tiles(out, lse, q, k, v, d, scratch, scratch_stride);
}

void attention_backward_avx2(float* dq, float* dk, float* dv, float* delta, const float* dout, const float* q,
                             const float* k, const float* v, const float* out, const float* lse,
                             const AttentionDims& d, float* scratch, int64_t scratch_stride) {
  backward_tiles(dq, dk, dv, delta, dout, q, k, v, out, lse, d, scratch, scratch_stride);
}

}  // namespace pk::cpu
