// CPU-internal GEMM entry points beyond the op table, for kernels that build on GEMM
// (fused LoRA, the fused LM-head loss). Not part of the public engine API.
#pragma once
#include <type_traits>

#include "peftkit/kernels.h"

namespace pk::cpu {

// An operand element as the GEMM reads it: bf16 widened to f32, or (ROUND: an f32 operand
// marked round_bf16, bf16 compute) rounded to bf16 first.
template <bool ROUND, typename T>
inline float operand_value(T v) {
  static_assert(!ROUND || std::is_same_v<T, float>, "only f32 operands are rounded");
  if constexpr (ROUND) return round_to_bf16(v);
  else if constexpr (std::is_same_v<T, bf16>) return bf16_to_f32(v);
  else return v;
}

// One product of a sum: alpha·op(A)[M,K]·op(B)[K,N].
struct GemmTerm {
  MatRef A, B;
  int64_t K;
  float alpha;
};

// C[M,N] = Σ_t alpha_t·op(A_t)·op(B_t) + beta·C in ONE pass over C: the K ranges of the terms
// are concatenated inside the packed panels (the "extend K by r" fusion of LoRA), so C is
// written once and no concatenated operand is ever materialized. A first term whose operands
// are both bf16 (stored, or rounded under bf16 compute) runs on the bf16 kernel where the CPU has
// one, the other terms joining each C tile in f32 after it (gemm_panels).
void gemm_sum(int64_t M, int64_t N, const GemmTerm* terms, int nterms, float beta, void* C, DType cdtype,
              int64_t ldc);

// ---- Panel sources: how operands reach the micro-kernel ------------------------------------
// The blocked GEMM never reads an operand itself: it asks a PanelSource to write a slice of it
// into a packed panel. Both operands are seen as K×X matrices (B is op(B)[K,N]; A is
// op(A)ᵀ[K,M]), and a panel is kc rows of `width` floats. A quantized weight (NF4, int8) becomes
// a GEMM operand by supplying its own `pack` that dequantizes while it packs: the full-precision
// weight never exists in memory, and the micro-kernels do not change.
struct PanelSource {
  // dst[k·width + x] = scale·X(k0 + k, x0 + x) for k < kc, x < nx; columns nx..width are zero.
  void (*pack)(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
               const void* ctx) = nullptr;
  // The same slice as bf16 k-pairs for VDPBF16PS: dst[(p·width + x)·2 + e] = X(k0 + 2p + e, x0 + x)
  // for p < ceil(kc/2); entries past kc or nx are zero. Null unless the values are bf16: stored
  // bf16, or rounded to bf16 under bf16 compute (then `pack` rounds too, for CPUs without the
  // bf16 kernel). gemm_panels runs the bf16 kernel only when both operands of its one term have it.
  void (*pack_bf16_pairs)(bf16* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx,
                          const void* ctx) = nullptr;
  const void* ctx = nullptr;
  // Set when X is plain f32 memory, X(k, x) = direct[k·k_stride + x·x_stride]: skinny shapes,
  // where a packed A panel would be used once, then read A in place.
  const float* direct = nullptr;
  int64_t k_stride = 0, x_stride = 0;
};

// op(M) of a MatRef (f32 or bf16) as a K×X source: pass M as B, or M with trans flipped as A.
// An f32 MatRef with round_bf16 packs its bf16 roundings. The source points at *m, which must
// outlive it.
PanelSource matref_source(const MatRef* m);

// One term of gemm_panels: alpha·op(A)·op(B) with a = op(A)ᵀ[K,M] and b = op(B)[K,N].
struct PanelTerm {
  PanelSource a, b;
  int64_t K;
  float alpha;
};

// gemm_sum over panel sources: what gemm and gemm_sum run, and the entry for quantized operands.
void gemm_panels(int64_t M, int64_t N, const PanelTerm* terms, int nterms, float beta, void* C, DType cdtype,
                 int64_t ldc);

}  // namespace pk::cpu
