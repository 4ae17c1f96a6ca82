// NEON GEMM micro-kernel (arm64 builds only): an 8×12 f32 tile in 24 of the 32 q registers,
// with 3 B vectors and 2 A vectors (8 rows) beside them; narrow last panels use 8×8 and 8×4.
// Each k step loads the 8 A values once and multiplies by lane (FMLA by element), where a
// broadcast per row would cost 8 loads. NEON is part of the arm64 base ISA, so this file needs
// no extra flags; it follows the rules of the x86 ISA files anyway (anonymous namespace, entry
// function only) and is reached through gemm_arch(), so PEFTKIT_ISA=portable still caps it.
#include <arm_neon.h>

#include "gemm_kernels.h"

namespace pk::cpu {

namespace {

constexpr int MR = 8, NR = 12, VW = 4;

// acc[I][v] += A(I)·b[v] for rows I..MR-1, A(i) in lane i%4 of a_lo (rows 0-3) or a_hi (4-7).
// A recursion over I so the lane is a constant expression, as FMLA (by element) needs.
template <int NV, int I>
inline void fma_rows(float32x4_t (&acc)[MR][NV], const float32x4_t (&bv)[NV], float32x4_t a_lo,
                     float32x4_t a_hi) {
  if constexpr (I < MR) {
    for (int v = 0; v < NV; v++) {
      if constexpr (I < 4) acc[I][v] = vfmaq_laneq_f32(acc[I][v], bv[v], a_lo, I);
      else acc[I][v] = vfmaq_laneq_f32(acc[I][v], bv[v], a_hi, I - 4);
    }
    fma_rows<NV, I + 1>(acc, bv, a_lo, a_hi);
  }
}

// ROW_CONTIG: A(i, k) = a[i + k·a_ks] (packed panels, and Aᵀ stored row-major read in place).
template <int NV, bool ROW_CONTIG>
void f32_tile(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, float* c, int64_t ldc,
              float alpha, float beta) {
  float32x4_t acc[MR][NV];
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < NV; v++) acc[i][v] = vdupq_n_f32(0.f);
  for (int64_t k = 0; k < kc; k++) {
    float32x4_t bv[NV];
    for (int v = 0; v < NV; v++) bv[v] = vld1q_f32(b + v * VW);
    float32x4_t a_lo, a_hi;
    if constexpr (ROW_CONTIG) {
      a_lo = vld1q_f32(a);
      a_hi = vld1q_f32(a + 4);
    } else {
      const float col[MR] = {a[0],        a[a_rs],     a[2 * a_rs], a[3 * a_rs],
                             a[4 * a_rs], a[5 * a_rs], a[6 * a_rs], a[7 * a_rs]};
      a_lo = vld1q_f32(col);
      a_hi = vld1q_f32(col + 4);
    }
    fma_rows<NV, 0>(acc, bv, a_lo, a_hi);
    a += a_ks;
    b += NV * VW;
  }
  const float32x4_t va = vdupq_n_f32(alpha), vb = vdupq_n_f32(beta);
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < NV; v++) {
      float* ci = c + i * ldc + v * VW;
      float32x4_t r = vmulq_f32(acc[i][v], va);
      if (beta != 0.f) r = vfmaq_f32(r, vb, vld1q_f32(ci));
      vst1q_f32(ci, r);
    }
}

template <bool ROW_CONTIG>
void f32_width(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int w, float* c,
               int64_t ldc, float alpha, float beta) {
  if (w == NR) f32_tile<3, ROW_CONTIG>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
  else if (w == 2 * VW) f32_tile<2, ROW_CONTIG>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
  else f32_tile<1, ROW_CONTIG>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
}

void f32_kernel(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int w, float* c,
                int64_t ldc, float alpha, float beta) {
  if (a_rs == 1) f32_width<true>(kc, a, a_rs, a_ks, b, w, c, ldc, alpha, beta);
  else f32_width<false>(kc, a, a_rs, a_ks, b, w, c, ldc, alpha, beta);
}

}  // namespace

GemmArch gemm_arch_neon() {
  // kc 256: an 8×256 A panel is 8 KiB of L1d; nc 2040 = 170 whole panels. Not tuned on arm64
  // hardware (none was at hand): the sizes follow the AVX2 kernel's.
  return GemmArch{"neon", MR, NR, VW, 256, 2040, f32_kernel, nullptr, 0, 0, {}};
}

}  // namespace pk::cpu
