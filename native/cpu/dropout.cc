// Dropout with a counter-based mask (peftkit/dropout_rng.h): element i is kept when
// dropout_keep(key(seed), offset + i, p), so backward recomputes the mask instead of storing it
// and the CUDA kernels draw the very same one.
#include "grain.h"
#include "peftkit/dropout_rng.h"
#include "peftkit/kernels.h"

namespace pk::cpu {

namespace {
// out[i] = keep ? in[i]·scale : 0; the forward and backward passes are the same map.
void apply_mask(float* out, const float* in, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const uint64_t key = dropout_key(seed);
  const float scale = dropout_scale(p);
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = dropout_keep(key, offset + uint64_t(i), p) ? in[i] * scale : 0.f;
}
}  // namespace

void dropout_forward(float* out, const float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  apply_mask(out, x, n, p, seed, offset);
}

void dropout_backward(float* dx, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset) {
  apply_mask(dx, dout, n, p, seed, offset);
}

}  // namespace pk::cpu
