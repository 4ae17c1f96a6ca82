// Dropout with a counter-based mask (peftkit/dropout_rng.h): element i is kept when
// dropout_keep(key(seed), offset + i, p), so backward recomputes the mask instead of storing it
// and the CUDA kernels draw the very same one. Kept values are multiplied by 1/(1-p) computed
// once (as PyTorch does), so forward and backward scale alike on every device.
#include "grain.h"
#include "peftkit/dropout_rng.h"
#include "peftkit/kernels.h"
#include "pointwise_table.h"

namespace pk::cpu {

namespace {
void apply_mask(float* out, const float* in, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const uint64_t key = dropout_key(seed);
  const float scale = dropout_scale(p);
  const auto loop = pointwise().dropout;
  parallel_ranges(n, [&](int64_t b, int64_t e) { loop(out + b, in + b, e - b, p, key, offset + uint64_t(b), scale); });
}
}  // namespace

void dropout_forward(float* out, const float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  apply_mask(out, x, n, p, seed, offset);
}

void dropout_backward(float* dx, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset) {
  apply_mask(dx, dout, n, p, seed, offset);
}

}  // namespace pk::cpu
