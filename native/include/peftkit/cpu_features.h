// What the CPU we run on can execute. Read once (CPUID + OS state); kernels pick their ISA
// from this at run time so one x86-64 binary serves every CPU.
#pragma once

namespace pk {

struct CpuFeatures {
  bool avx2_fma = false;
  bool avx512 = false;       // F + BW + DQ + VL
  bool avx512_bf16 = false;  // VDPBF16PS
  bool amx_bf16 = false;     // tiles usable (CPUID and the OS granted XTILEDATA)
  bool neon = false;
};

const CpuFeatures& cpu_features();
// The ISA the f32 GEMM dispatches to: "amx-bf16", "avx512", "avx2", "neon" or "portable".
// PEFTKIT_ISA=portable|neon|avx2|avx512 caps it (for tests and benchmarks of the lower paths).
const char* cpu_isa_name();
enum class Isa : int { Portable = 0, Neon = 1, Avx2 = 2, Avx512 = 3 };
Isa cpu_isa();

}  // namespace pk
