// Dropout with the counter-based mask of dropout_rng.h: the same (seed, offset) gives the same
// mask as the CPU kernel, bit for bit, so backward recomputes it.
#include "common.cuh"
#include "peftkit/dropout_rng.h"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
// out[i] = keep(seed, offset + i) ? x[i] / (1 - p) : 0. __fdiv_rn is the IEEE division the CPU
// does (--use_fast_math would otherwise approximate it). Forward and backward are the same map.
__global__ void dropout_kernel(float* out, const float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const float keep_prob = 1.f - p;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = dropout_keep(seed, offset + uint64_t(i), p) ? __fdiv_rn(x[i], keep_prob) : 0.f;
}
}  // namespace

void dropout_forward(float* out, const float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  if (n == 0) return;
  dropout_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n, p, seed, offset);
  check_launch("dropout_forward");
}

void dropout_backward(float* dx, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset) {
  if (n == 0) return;
  dropout_kernel<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dx, dout, n, p, seed, offset);
  check_launch("dropout_backward");
}

}  // namespace pk::cuda
