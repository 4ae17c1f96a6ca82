// The register-blocked GEMM micro-kernels, one set per ISA, and the tile and cache-block sizes
// that go with them. Internal to the CPU GEMM (gemm.cc drives them). Only plain declarations
// here: this header is included by files compiled with different ISA flags.
#pragma once
#include <cstdint>

#include "peftkit/dtype.h"

namespace pk::cpu {

// acc[i][j] = Σ_{k<kc} A(i,k)·b[k·w + j] for i < mr, j < w, with A(i,k) = a[i·a_rs + k·a_ks]
// (a packed panel has a_rs = 1, a_ks = mr); then c[i·ldc + j] = alpha·acc + beta·c, where
// beta == 0 means c is not read. w is the panel width: nr, or a multiple of vw below it.
using GemmF32Kernel = void (*)(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int w,
                               float* c, int64_t ldc, float alpha, float beta);
// The same over bf16 k-pairs (VDPBF16PS): A(i, 2p+e) = a[(p·mr + i)·2 + e], b[(p·w + j)·2 + e],
// p < ceil(kc/2).
using GemmBf16Kernel = void (*)(int64_t kc, const bf16* a, const bf16* b, int w, float* c, int64_t ldc,
                                float alpha, float beta);

// Packers for the transposing layouts, where X(k, x) = src[x·ld + k] (each x a contiguous run of
// k): dst[k·width + x] = scale·X(k, x) for k < kc, x < nx, zero for nx <= x < width. The pair
// forms write bf16 k-pairs, dst[(p·width + x)·2 + e] = X(2p + e, x), zero past kc, for the
// transposing layout and for X(k, x) = src[k·ld + x] (rows); the f32 ones round to nearest even
// on the way (bf16 compute; they need AVX512-BF16, and are only called where the bf16 kernel
// runs). A null entry leaves the job to the portable loops in gemm_pack.cc.
struct GemmPackers {
  void (*f32_cols)(float* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx, float scale);
  void (*bf16_cols)(float* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx, float scale);
  void (*bf16_pair_cols)(bf16* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx);
  void (*f32_pair_cols)(bf16* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx);
  void (*f32_pair_rows)(bf16* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx);
  void (*bf16_pair_rows)(bf16* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx);
  // The rows layout into f32 panels, dst[k·width + x] = scale·X(k, x) (bf16 widened).
  void (*f32_rows)(float* dst, int64_t width, const float* src, int64_t ld, int64_t kc, int64_t nx, float scale);
  void (*bf16_rows)(float* dst, int64_t width, const bf16* src, int64_t ld, int64_t kc, int64_t nx, float scale);
};

// Rearranges a bf16 A micro-panel from k-pairs (src[(p·mr + i)·2 + e], p < ceil(kc/2)) into the
// layout a bf16 kernel reads, zero-padding k up to GemmArch::k_align_bf16.
using GemmBf16ALayout = void (*)(bf16* dst, const bf16* src, int64_t kc, int mr);

// A few rows against matrices read in place, y[i·ldy + j] += Σ_{k<K} x[i·ldx + k]·w[j·ldw + k] for
// i < m, j < n (m ≤ 16: the decode step of a small batch, X·Wᵀ with W's rows contiguous). That
// product is memory-bound on W, which the packed path would read twice (packing, then the
// panels); here each W row is read once, for every row of x. Null entries: the packed path.
struct GemmFewRows {
  void (*f32)(int m, int64_t n, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
              int64_t ldy);
  void (*bf16)(int m, int64_t n, int64_t K, const float* x, int64_t ldx, const bf16* w, int64_t ldw, float* y,
               int64_t ldy);
};
constexpr int kFewRowsMax = 16;

struct GemmArch {
  const char* name;
  int mr, nr, vw;  // register tile mr×nr; panel widths are multiples of vw up to nr
  // Blocking: an A micro-panel (mr·kc) stays in L1 while the jr loop streams the B block
  // (kc·nc) past it, from L2 or L3; A is packed again for every nc columns, so nc is large.
  int64_t kc, nc;
  GemmF32Kernel f32;
  GemmBf16Kernel bf16;  // null where the CPU has no AVX512-BF16
  int64_t kc_bf16, nc_bf16;
  GemmPackers pack;
  // The bf16 kernel's own tile, where it is not the f32 one (AMX): mr_bf16 rows, a multiple of
  // mr (0: mr), so the f32 kernel can add a tail term to a bf16 tile in mr-row strips; its panels
  // hold k padded to a multiple of k_align_bf16 (B panels zero-filled by the driver, A panels by
  // bf16_a_layout, which null means the kernel reads the k-pair layout itself).
  int mr_bf16 = 0;
  int k_align_bf16 = 2;
  GemmBf16ALayout bf16_a_layout = nullptr;
  GemmFewRows few_rows = {nullptr, nullptr};
};

// The set this CPU runs, chosen once from cpu_isa() (gemm.cc).
const GemmArch& gemm_arch();

// Defined in the *_avx512.cc and *_avx2.cc files (x86-64 builds only); called after a CPUID check.
GemmArch gemm_arch_avx512();
GemmPackers gemm_packers_avx512();
GemmFewRows gemm_few_rows_avx512();
GemmArch gemm_arch_avx2();
// The AVX-512 set with its bf16 products on AMX tiles (gemm_amx.cc), or on a software model of
// the tiles (gemm_amx_emulated_avx512.cc: PEFTKIT_ISA=amx-emulated, so the AMX kernel's panel
// layouts and tile programs are tested on CPUs without AMX).
GemmArch gemm_arch_amx(GemmArch avx512);
GemmArch gemm_arch_amx_emulated(GemmArch avx512);
// Defined in gemm_neon.cc (arm64 builds only).
GemmArch gemm_arch_neon();

}  // namespace pk::cpu
