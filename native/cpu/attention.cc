// Causal attention with grouped-query heads, flash-style: queries × keys in 64×64 tiles with an
// online softmax, so no Tq×Tk score matrix exists; backward recomputes each tile's
// probabilities from lse. The algorithm lives in attention_tiles.inc; this file compiles its
// portable copy, owns the scratch and picks the ISA version at run time.
#include <math.h>
#include <omp.h>

#include <cstdint>
#include <memory>

#include "attention.h"
#include "peftkit/cpu_features.h"
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {

// Portable tile product and transpose (see attention_tiles.inc): plain loops over contiguous columns, which
// the compiler vectorizes with whatever the baseline ISA offers.
void tile_gemm(float* __restrict c, int64_t ldc, const float* __restrict a, int64_t sai, int64_t sak,
               const float* __restrict b, int64_t ldb, int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t i = 0; i < m; i++) {
    float* __restrict crow = c + i * ldc;
    if (!accumulate)
      for (int64_t j = 0; j < n; j++) crow[j] = 0.f;
    for (int64_t kk = 0; kk < k; kk++) {
      const float av = a[i * sai + kk * sak];
      const float* __restrict brow = b + kk * ldb;
      for (int64_t j = 0; j < n; j++) crow[j] += av * brow[j];
    }
  }
}

void pack_transposed(float* __restrict dst, const float* __restrict rows, int64_t ld, int64_t cols, int64_t D) {
  for (int64_t c = 0; c < cols; c++)
    for (int64_t dd = 0; dd < D; dd++) dst[dd * kAttnTileK + c] = rows[c * ld + dd];
}

#include "attention_tiles.inc"

// Uninitialized, 64-byte aligned floats for the per-thread tile buffers.
class Scratch {
 public:
  explicit Scratch(int64_t floats) : mem_(new float[size_t(floats) + 16]) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(mem_.get());
    data_ = reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
  }
  float* data() const { return data_; }

 private:
  std::unique_ptr<float[]> mem_;
  float* data_;
};

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                       int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, float scale) {
  // A decode step of one sequence (one query over a short cache) is a few microseconds of work:
  // waking a team for it cost ~75 µs a call (batched decoding makes one call per row and layer,
  // 240 a step for 8 rows of SmolLM2-135M), so such calls run on the calling thread.
  const bool tiny = B * Hq * Tq * Tk * D < (int64_t(1) << 18);
  const AttentionDims d{B, Tq, Tk, Hq, Hkv, D, scale, tiny ? 1 : num_threads()};
  const int64_t stride = scratch_floats_per_thread(D);
  Scratch scratch(d.threads * stride);
  switch (cpu_isa()) {
#ifdef PEFTKIT_X86
    case Isa::Avx512:
      return attention_forward_avx512(out, lse, q, k, v, d, scratch.data(), stride);
    case Isa::Avx2:
      return attention_forward_avx2(out, lse, q, k, v, d, scratch.data(), stride);
#endif
    default:
      return forward_tiles(out, lse, q, k, v, d, scratch.data(), stride);
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int64_t B, int64_t Tq, int64_t Tk,
                        int64_t Hq, int64_t Hkv, int64_t D, float scale) {
  const AttentionDims d{B, Tq, Tk, Hq, Hkv, D, scale, num_threads()};
  const int64_t stride = scratch_floats_per_thread(D);
  Scratch scratch(d.threads * stride + round16(B * Hq * Tq));
  float* delta = scratch.data() + d.threads * stride;
  switch (cpu_isa()) {
#ifdef PEFTKIT_X86
    case Isa::Avx512:
      return attention_backward_avx512(dq, dk, dv, delta, dout, q, k, v, out, lse, d, scratch.data(), stride);
    case Isa::Avx2:
      return attention_backward_avx2(dq, dk, dv, delta, dout, q, k, v, out, lse, d, scratch.data(), stride);
#endif
    default:
      return backward_tiles(dq, dk, dv, delta, dout, q, k, v, out, lse, d, scratch.data(), stride);
  }
}

}  // namespace pk::cpu
