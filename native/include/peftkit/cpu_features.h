// What the CPU we run on can execute. Read once (CPUID + OS state); kernels pick their ISA
// from this at run time so one x86-64 binary serves every CPU.
#pragma once

namespace pk {

struct CpuFeatures {
  bool avx2_fma = false;
  bool avx512 = false;       // F + BW + DQ + VL
  bool avx512_bf16 = false;  // VDPBF16PS
  bool amx_bf16 = false;     // AMX-BF16 + AMX-TILE, and the OS manages the tile state (XCR0)
  bool neon = false;
};

const CpuFeatures& cpu_features();
// The ISA the CPU kernels dispatch to: "avx512+amx-bf16", "avx512", "avx2", "neon" or "portable".
// PEFTKIT_ISA=portable|neon|avx2|avx512 caps it (for tests and benchmarks of the lower paths);
// PEFTKIT_ISA=amx-emulated runs the AMX GEMM kernel on a software model of the tiles
// ("avx512+amx-bf16-emulated", on AVX512-BF16 CPUs), so its code is tested where no CPU has AMX.
const char* cpu_isa_name();
enum class Isa : int { Portable = 0, Neon = 1, Avx2 = 2, Avx512 = 3 };
Isa cpu_isa();
// Where bf16 GEMM products run on AMX tiles: only above the AVX-512 ISA with AVX512-BF16, whose
// packers and stores the AMX kernel uses.
enum class Amx : int { None = 0, Hardware = 1, Emulated = 2 };
Amx cpu_amx();

}  // namespace pk
