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

struct GemmArch {
  const char* name;
  int mr, nr, vw;      // register tile mr×nr; panel widths are multiples of vw up to nr
  int64_t kc, nc;      // f32 blocking: an A panel (mr·kc) stays in L1, a B block (kc·nc) in L2
  GemmF32Kernel f32;
  GemmBf16Kernel bf16;  // null where the CPU has no AVX512-BF16
  int64_t kc_bf16, nc_bf16;
};

// Defined in gemm_avx512.cc and gemm_avx2.cc (x86-64 builds only); called after a CPUID check.
GemmArch gemm_arch_avx512();
GemmArch gemm_arch_avx2();

}  // namespace pk::cpu
