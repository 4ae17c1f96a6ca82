#include "peftkit/cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace pk {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
unsigned long long xgetbv0() {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

// Linux hands out AMX tile state only to processes that ask for it.
bool request_amx() {
#if defined(__linux__)
  const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
  return false;
#endif
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), avx = c & (1u << 28);
  if (!osxsave || !avx) return f;
  const unsigned long long xcr0 = xgetbv0();
  const bool ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
  unsigned a7, b7, c7, d7;
  __cpuid_count(7, 0, a7, b7, c7, d7);
  f.avx2_fma = ymm_os && fma && (b7 & (1u << 5));
  const bool f512 = b7 & (1u << 16), dq = b7 & (1u << 17), bw = b7 & (1u << 30), vl = b7 & (1u << 31);
  f.avx512 = f.avx2_fma && zmm_os && f512 && dq && bw && vl;
  unsigned a71 = 0, b71, c71, d71;
  if (a7 >= 1) __cpuid_count(7, 1, a71, b71, c71, d71);
  f.avx512_bf16 = f.avx512 && (a71 & (1u << 5));
  const bool amx_cpu = (d7 & (1u << 22)) && (d7 & (1u << 24));  // AMX-BF16 + AMX-TILE
  f.amx_bf16 = amx_cpu && ((xcr0 >> 17) & 3) == 3;
#elif defined(__aarch64__)
  f.neon = true;
#endif
  return f;
}

Isa detect_isa(const CpuFeatures& f) {
  Isa best = f.avx512 ? Isa::Avx512 : f.avx2_fma ? Isa::Avx2 : f.neon ? Isa::Neon : Isa::Portable;
  if (const char* cap = std::getenv("PEFTKIT_ISA")) {
    Isa want = !std::strcmp(cap, "portable") ? Isa::Portable
               : !std::strcmp(cap, "avx2")   ? Isa::Avx2
               : !std::strcmp(cap, "neon")   ? Isa::Neon
                                             : Isa::Avx512;
    if (int(want) < int(best)) best = want;
  }
  return best;
}

Amx detect_amx(const CpuFeatures& f, Isa isa) {
  if (isa != Isa::Avx512 || !f.avx512_bf16) return Amx::None;
  // Lower caps already left the ISA below AVX-512; of the caps, only avx512 turns the tiles off.
  const char* cap = std::getenv("PEFTKIT_ISA");
  if (cap && !std::strcmp(cap, "amx-emulated")) return Amx::Emulated;
  if (cap && !std::strcmp(cap, "avx512")) return Amx::None;
  // Asked for only when the tiles will be used: once granted, Linux refuses this process any
  // later sigaltstack too small for the tile state.
#if defined(__x86_64__) || defined(_M_X64)
  if (f.amx_bf16 && request_amx()) return Amx::Hardware;
#endif
  return Amx::None;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa cpu_isa() {
  static const Isa isa = detect_isa(cpu_features());
  return isa;
}

Amx cpu_amx() {
  static const Amx amx = detect_amx(cpu_features(), cpu_isa());
  return amx;
}

const char* cpu_isa_name() {
  switch (cpu_isa()) {
    case Isa::Avx512:
      return cpu_amx() == Amx::Hardware   ? "avx512+amx-bf16"
             : cpu_amx() == Amx::Emulated ? "avx512+amx-bf16-emulated"
                                          : "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Neon: return "neon";
    default: return "portable";
  }
}

}  // namespace pk
