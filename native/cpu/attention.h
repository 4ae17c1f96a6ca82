// CPU-internal entry points of causal attention: one pair per ISA, all compiled from the same
// tile algorithm (attention_tiles.inc). pk::cpu::attention_forward / _backward (attention.cc)
// allocate the per-thread tile buffers and pick one of these with pk::cpu_isa().
#pragma once
#include <cstdint>

namespace pk::cpu {

// Tiles of 64 queries × 64 keys: a row of scores is 4 zmm registers, and a thread's tile
// buffers (attention_tiles.inc) stay in L2 for D up to a few hundred.
constexpr int64_t kAttnTileQ = 64, kAttnTileK = 64;

struct AttentionDims {
  int64_t B, Tq, Tk, Hq, Hkv, D;
  float scale;
  int threads;  // the OpenMP team size the scratch was sized for
};

// scratch holds threads * scratch_stride floats, 64-byte aligned; delta holds B*Hq*Tq floats.
#ifdef PEFTKIT_X86
void attention_forward_avx512(float* out, float* lse, const float* q, const float* k, const float* v,
                              const AttentionDims& d, float* scratch, int64_t scratch_stride);
void attention_backward_avx512(float* dq, float* dk, float* dv, float* delta, const float* dout,
                               const float* q, const float* k, const float* v, const float* out,
                               const float* lse, const AttentionDims& d, float* scratch,
                               int64_t scratch_stride);
void attention_forward_avx2(float* out, float* lse, const float* q, const float* k, const float* v,
                            const AttentionDims& d, float* scratch, int64_t scratch_stride);
void attention_backward_avx2(float* dq, float* dk, float* dv, float* delta, const float* dout,
                             const float* q, const float* k, const float* v, const float* out,
                             const float* lse, const AttentionDims& d, float* scratch,
                             int64_t scratch_stride);
#endif

}  // namespace pk::cpu
