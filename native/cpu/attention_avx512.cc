// AVX-512 attention: the tile algorithm of attention_tiles.inc on a register-blocked tile
// product (4 rows × up to 64 columns = 16 zmm accumulators, masked column tails so any D works)
// and 16×16 register transposes for packing key tiles.
#include <immintrin.h>
#include <math.h>
#include <omp.h>

#include <cstdint>

#include "attention.h"

// GCC 12 flags the undefined pass-through operand inside its own unpack/shuffle intrinsics
// (GCC bug 105593, fixed in its headers later).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace pk::cpu {

namespace {

// C[0:MR, 0:16·NV] (+)= A·B for one register block; the last vector of a row is masked by tail.
template <int MR, int NV>
inline void micro(float* c, int64_t ldc, const float* a, int64_t sai, int64_t sak, const float* b, int64_t ldb,
                  int64_t k, __mmask16 tail, bool accumulate) {
  __m512 acc[MR][NV];
#pragma GCC unroll 4
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
      acc[i][v] = accumulate ? _mm512_maskz_loadu_ps(v == NV - 1 ? tail : 0xffff, c + i * ldc + 16 * v)
                             : _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    const float* brow = b + kk * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) bv[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? tail : 0xffff, brow + 16 * v);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
      const __m512 av = _mm512_set1_ps(a[i * sai + kk * sak]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
      _mm512_mask_storeu_ps(c + i * ldc + 16 * v, v == NV - 1 ? tail : 0xffff, acc[i][v]);
}

template <int MR>
inline void micro_cols(int64_t nv, float* c, int64_t ldc, const float* a, int64_t sai, int64_t sak, const float* b,
                       int64_t ldb, int64_t k, __mmask16 tail, bool accumulate) {
  switch (nv) {
    case 1: return micro<MR, 1>(c, ldc, a, sai, sak, b, ldb, k, tail, accumulate);
    case 2: return micro<MR, 2>(c, ldc, a, sai, sak, b, ldb, k, tail, accumulate);
    case 3: return micro<MR, 3>(c, ldc, a, sai, sak, b, ldb, k, tail, accumulate);
    default: return micro<MR, 4>(c, ldc, a, sai, sak, b, ldb, k, tail, accumulate);
  }
}

void tile_gemm(float* c, int64_t ldc, const float* a, int64_t sai, int64_t sak, const float* b, int64_t ldb,
               int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t j0 = 0; j0 < n; j0 += 64) {
    const int64_t nn = n - j0 < 64 ? n - j0 : 64, nv = (nn + 15) / 16;
    const __mmask16 tail = __mmask16((1u << (nn - 16 * (nv - 1))) - 1u);
    int64_t i = 0;
    for (; i + 4 <= m; i += 4)
      micro_cols<4>(nv, c + i * ldc + j0, ldc, a + i * sai, sai, sak, b + j0, ldb, k, tail, accumulate);
    for (; i < m; i++)
      micro_cols<1>(nv, c + i * ldc + j0, ldc, a + i * sai, sai, sak, b + j0, ldb, k, tail, accumulate);
  }
}

#include "transpose16_avx512.h"

// 16 keys × 16 dims at a time through registers; rows past cols load as zeros.
void pack_transposed(float* dst, const float* rows, int64_t ld, int64_t cols, int64_t D) {
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    const int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
      const int64_t nd = D - d0 < 16 ? D - d0 : 16;
      const __mmask16 m = __mmask16((1u << nd) - 1u);
      __m512 r[16];
#pragma GCC unroll 16
      for (int t = 0; t < 16; t++)
        r[t] = t < nc ? _mm512_maskz_loadu_ps(m, rows + (c0 + t) * ld + d0) : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t x = 0; x < nd; x++) _mm512_storeu_ps(dst + (d0 + x) * kAttnTileK + c0, r[x]);
    }
  }
}

#include "attention_tiles.inc"

}  // namespace

void attention_forward_avx512(float* out, float* lse, const float* q, const float* k, const float* v,
                              const AttentionDims& d, float* scratch, int64_t scratch_stride) {
  forward_tiles(out, lse, q, k, v, d, scratch, scratch_stride);
}

void attention_backward_avx512(float* dq, float* dk, float* dv, float* delta, const float* dout, const float* q,
                               const float* k, const float* v, const float* out, const float* lse,
                               const AttentionDims& d, float* scratch, int64_t scratch_stride) {
  backward_tiles(dq, dk, dv, delta, dout, q, k, v, out, lse, d, scratch, scratch_stride);
}

}  // namespace pk::cpu
