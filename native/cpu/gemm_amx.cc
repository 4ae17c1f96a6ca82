// The AMX-BF16 GEMM kernel on the hardware tiles (the kernel itself: gemm_amx_kernel.inc).
// Compiled with AMX flags; reached only through gemm_arch() after cpu_amx() found tiles the OS
// granted (cpu_features.cc asks Linux for them).
//
// The tile operations are written as inline assembly rather than GCC's _tile_* macros: those
// declare no memory operands for tileloadd (nothing orders it after the stores that packed the
// panel it reads) and only 8 of ldtilecfg's 64 bytes.
#include <immintrin.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "gemm_kernels.h"

namespace pk::cpu {

namespace {

#include "transpose16_avx512.h"

#define PK_TILE_CONFIG(cfg) \
  __asm__ volatile("ldtilecfg %0" ::"m"(*reinterpret_cast<const unsigned char(*)[64]>(cfg)) : "memory")
#define PK_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define PK_TILE_LOAD(t, p, s) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(static_cast<const void*>(p)), "r"(int64_t(s)) : "memory")
#define PK_TILE_STORE(t, p, s) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(static_cast<void*>(p)), "r"(int64_t(s)) : "memory")
#define PK_TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define PK_TILE_RELEASE() __asm__ volatile("tilerelease" ::: "memory")

#include "gemm_amx_kernel.inc"

}  // namespace

GemmArch gemm_arch_amx(GemmArch avx512) { return amx_arch(avx512, "avx512+amx-bf16", amx_bf16_kernel); }

}  // namespace pk::cpu
