// AVX2+FMA attention: the tile algorithm of attention_tiles.inc on a register-blocked tile
// product (4 rows × 16 columns = 8 ymm accumulators; a masked last vector handles any width).
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
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < NV; v++)
      acc[i][v] = accumulate ? load(c + i * ldc + 8 * v, Tail && v == NV - 1, mask) : _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    const float* brow = b + kk * ldb;
    __m256 bv[NV];
    for (int v = 0; v < NV; v++) bv[v] = load(brow + 8 * v, Tail && v == NV - 1, mask);
    for (int i = 0; i < MR; i++) {
      const __m256 av = _mm256_broadcast_ss(a + i * sai + kk * sak);
      for (int v = 0; v < NV; v++) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; i++)
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
